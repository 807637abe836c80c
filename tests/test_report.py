"""tensorsim.analysis.report on run directories written by hand: a single run, a packed grid, a multirun."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli

from tensorsim.analysis import perspective as persp, report as rep
from tensorsim.analysis.runs import rank_sizes

PNG = b"\x89PNG\r\n\x1a\n"


def write_cell(d, runs, k=None, p=None, grid=False, agents=True, transcript=False, config=None):
    """A complete cell directory. runs: dicts with replica, S (None at t=0), E, silos, pattern, last,
    and optionally labels [T][n] (agents.csv) and answers [T][n] (transcript.jsonl)."""
    d.mkdir(parents=True, exist_ok=True)
    extra = [k, p] if grid else []
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["replica", "t", "stability", "entropy", "n_silos"] + (["k", "p"] if grid else []))
        for t in range(len(runs[0]["E"])):
            for r in runs:
                s = "" if r["S"][t] is None else f"{r['S'][t]:.6f}"
                w.writerow([r["replica"], t, s, f"{r['E'][t]:.6f}", r["silos"][t]] + extra)
    if agents:
        with open(d / "agents.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["replica", "t", "agent", "label", "label_name", "partner", "mirrored"]
                       + (["k", "p"] if grid else []))
            for r in runs:
                for t, row in enumerate(r["labels"]):
                    for i, lab in enumerate(row):
                        w.writerow([r["replica"], t, i, lab, f"flower{lab}" if lab >= 0 else "unlabeled", i, 0] + extra)
    if transcript:
        with open(d / "transcript.jsonl", "w") as f:
            for r in runs:
                for t, row in enumerate(r["answers"]):
                    for i, a in enumerate(row):
                        f.write(json.dumps({"replica": r["replica"], "t": t, "agent": i, "context": "c",
                                            "response": a}) + "\n")
    summary = {"config": config or {}, "models": {"agents": "llm"}, "n": 3, "steps": len(runs[0]["E"]),
               "k": k, "p": p, "complete": True,
               "replicas": [{"replica": r["replica"], "seed": r.get("seed", abs(hash((str(d), r["replica"])))),
                             "final_n_silos": r["silos"][-1],
                             "pattern": r["pattern"], "last_change_step": r["last"], "final_entropy": r["E"][-1],
                             "silos": []} for r in runs]}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


# two replicas of cell (k=1, p=0.2): finals 2 and 1 silos, patterns stable and single, last changes 1 and 2
RUN_A0 = dict(replica=0, S=[None, 0.5, 1.0, 1.0], E=[1.0, 0.7, 0.6, 0.6], silos=[3, 2, 2, 2], pattern="stable",
              last=1, labels=[[0, 1, 2], [0, 0, 2], [0, 0, 2], [0, 0, 2]])
RUN_A1 = dict(replica=1, S=[None, 0.5, 0.75, 1.0], E=[1.0, 0.6, 0.0, 0.0], silos=[3, 2, 1, 1], pattern="single",
              last=2, labels=[[0, 1, 2], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
# another run of (1, 0.2) with 3 final silos, and a run of (5, 0.2)
RUN_B0 = dict(replica=0, S=[None, 1.0, 0.5, 0.5], E=[1.1, 1.1, 1.1, 1.1], silos=[3, 3, 3, 3], pattern="unstable",
              last=3, labels=[[0, 1, 2], [0, 1, 2], [1, 0, 2], [2, 0, 1]])
RUN_C0 = dict(replica=0, S=[None, 0.0, 1.0, 1.0], E=[1.1, 0.0, 0.0, 0.0], silos=[3, 1, 1, 1], pattern="single",
              last=1, labels=[[0, 1, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]])


def read_phase(path):
    with open(path, newline="") as f:
        return {(r["k"], r["p"]): r for r in csv.DictReader(f)}


def f(x):
    return float(x) if x != "" else math.nan


def test_single_run_values_and_figures(tmp_path, capsys):
    run = write_cell(tmp_path / "run", [RUN_A0, RUN_A1], k=1, p=0.2)
    assert rep.main([str(run), "--window", "2"]) == 0
    row = read_phase(run / "phase.csv")[("1", "0.2")]
    assert int(row["runs"]) == 2
    assert f(row["final_silos_mean"]) == pytest.approx(1.5)
    assert f(row["final_silos_sd"]) == pytest.approx(math.sqrt(0.5))  # sample sd of {2, 1}
    assert f(row["share_single"]) == 0.5 and f(row["share_stable"]) == 0.5
    assert f(row["share_unstable"]) == 0 and f(row["share_decaying"]) == 0
    assert f(row["median_last_change_step"]) == 1.5
    # last 2 steps: run 0 -> (1 + 1) / 2, run 1 -> (0.75 + 1) / 2
    assert f(row["mean_stability_window"]) == pytest.approx((1.0 + 0.875) / 2)
    assert f(row["mean_final_entropy"]) == pytest.approx(0.3)
    for name in ("phase_silos.png", "phase_convergence.png", "curves_stability.png", "curves_entropy.png",
                 "silo_sizes.png"):
        assert (run / name).read_bytes()[:8] == PNG, name
    md = (run / "phase.md").read_text()
    assert "| 1 | 0.2 | 2 | 1.50 ± 0.71 | 0.50 | 0.50 | 0.00 | 0.00 | 1.5 | 0.938 | 0.300 |" in md
    assert "pass --embed" in md  # no perspective without --embed, and it says so
    assert not (run / "perspective.png").exists()
    assert not list(run.glob(".*.tmp"))


def test_window_default_and_out_dir(tmp_path):
    run = write_cell(tmp_path / "run", [RUN_A0, RUN_A1], k=1, p=0.2)
    out = tmp_path / "elsewhere"
    assert rep.main([str(run), "--out", str(out), "--band", "iqr"]) == 0
    row = read_phase(out / "phase.csv")[("1", "0.2")]
    # window 20 > T: every step t >= 1: run 0 -> 2.5 / 3, run 1 -> 2.25 / 3
    assert f(row["mean_stability_window"]) == pytest.approx((2.5 / 3 + 2.25 / 3) / 2)
    assert not (run / "phase.csv").exists()
    assert "longer than the runs" in (out / "phase.md").read_text()


def make_grid(root, complete=True):
    cells = [(1, 0.2, [RUN_A0, RUN_A1]), (5, 0.2, [RUN_C0]), (1, 0.7, [RUN_B0])]
    for k, p, runs in cells:
        write_cell(root / "cells" / f"k{k}_p{p:g}", runs, k=k, p=p, grid=True)
    # a fourth cell that never finished
    (root / "cells" / "k5_p0.7").mkdir(parents=True)
    (root / "cells" / "k5_p0.7" / "metrics.csv.partial").write_text("replica,t\n")
    if complete:
        (root / "cells" / "k5_p0.7" / "summary.json").unlink(missing_ok=True)
        listed = [{"k": k, "p": p, "dir": f"cells/k{k}_p{p:g}"} for k, p, _ in cells]
        listed.append({"k": 5, "p": 0.7, "dir": "cells/k5_p0.7"})
        (root / "summary.json").write_text(json.dumps({"config": {}, "cells": listed, "complete": True}))
    return root


@pytest.mark.parametrize("complete", [True, False])
def test_packed_grid(tmp_path, capsys, complete):
    root = make_grid(tmp_path / "grid", complete)
    assert rep.main([str(root), "--window", "3"]) == 0
    err = capsys.readouterr().err
    assert "k5_p0.7: incomplete (no summary.json)" in err
    if not complete:
        assert "incomplete grid" in err
    phase = read_phase(root / "phase.csv")
    assert set(phase) == {("1", "0.2"), ("1", "0.7"), ("5", "0.2")}
    assert f(phase[("5", "0.2")]["final_silos_mean"]) == 1 and phase[("5", "0.2")]["final_silos_sd"] == ""
    assert f(phase[("5", "0.2")]["share_single"]) == 1
    assert f(phase[("1", "0.7")]["share_unstable"]) == 1
    assert f(phase[("1", "0.7")]["mean_stability_window"]) == pytest.approx(2 / 3)
    assert f(phase[("1", "0.2")]["final_silos_mean"]) == 1.5
    assert "k5_p0.7" in (root / "phase.md").read_text()


def test_multirun_pools_replicas_and_skips_incomplete(tmp_path, capsys):
    root = tmp_path / "multirun"
    write_cell(root / "0", [RUN_A0, RUN_A1], k=1, p=0.2)
    write_cell(root / "1", [RUN_B0], k=1, p=0.2)
    write_cell(root / "2", [RUN_C0], k=5, p=0.2)
    (root / "3" / ".hydra").mkdir(parents=True)  # a job that crashed or still runs
    (root / "3" / "metrics.csv.partial").write_text("")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / ".submitit").mkdir()
    assert rep.main([str(root), "--window", "2"]) == 0
    assert f"skipped {root / '3'}: incomplete run (no summary.json" in capsys.readouterr().err
    phase = read_phase(root / "phase.csv")
    assert list(phase) == [("1", "0.2"), ("5", "0.2")]
    row = phase[("1", "0.2")]
    assert int(row["runs"]) == 3
    assert f(row["final_silos_mean"]) == pytest.approx(2.0)  # {2, 1, 3}
    assert f(row["final_silos_sd"]) == pytest.approx(1.0)
    for pat in ("single", "stable", "unstable"):
        assert f(row[f"share_{pat}"]) == pytest.approx(1 / 3)
    assert f(row["median_last_change_step"]) == 2  # {1, 2, 3}
    assert f(row["mean_stability_window"]) == pytest.approx((1.0 + 0.875 + 0.5) / 3)


def test_repeated_seeds_are_noted(tmp_path):
    root = tmp_path / "multirun"
    write_cell(root / "0", [dict(RUN_C0, seed=7)], k=5, p=0.2)
    write_cell(root / "1", [dict(RUN_C0, seed=7)], k=5, p=0.2)
    assert rep.main([str(root)]) == 0
    assert "1 run(s) repeat the seed of another run" in (root / "phase.md").read_text()
    assert read_phase(root / "phase.csv")[("5", "0.2")]["runs"] == "2"


def test_missing_agents_csv_is_noted(tmp_path):
    run = write_cell(tmp_path / "run", [RUN_C0], k=5, p=0.5, agents=False)
    assert rep.main([str(run)]) == 0
    assert not (run / "silo_sizes.png").exists()
    assert "no agents.csv" in (run / "phase.md").read_text()


def test_errors_exit_2_with_one_line(tmp_path, capsys):
    assert rep.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no such directory" in err and "\n" not in err
    (tmp_path / "empty" / "0" / ".hydra").mkdir(parents=True)
    assert rep.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "no complete run" in err[-1]
    run = write_cell(tmp_path / "run", [RUN_C0], k=5, p=0.5)
    assert rep.main([str(run), "--embed", "--mds-steps", "0,9"]) == 2
    assert "outside 0..3" in capsys.readouterr().err


def test_cli_exit_code_no_traceback(tmp_path):
    r = run_cli(tmp_path / "missing", module="tensorsim.report")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr and "no such directory" in r.stderr


def test_rank_sizes():
    lab = np.array([[0, 1, 2, -1], [0, 0, 2, 2], [1, 1, 1, 1]])
    assert rank_sizes(lab).tolist() == [[1, 1, 1, 1], [2, 2, 0, 0], [4, 0, 0, 0]]


def test_pairwise_distances_exact_zeros_and_precision_without_blas():
    """Identical points are exactly 0 apart, the matrix is exactly symmetric, and every distance is within
    a few ulps of math.dist: bounds that hold on any CPU, whatever BLAS kernel it would pick."""
    import math

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 384))
    X[5] = X[3]  # a duplicate point
    X[7] = X[3] + 1e-9  # a point 2e-8 away: the Gram formula rounds it to 0 or to ~1e-7
    for data in (X, X.astype(np.float32)):  # embeddings arrive as float32
        D = persp.pairwise_distances(data)
        assert D.dtype == np.float64
        assert (np.diag(D) == 0).all() and D[3, 5] == 0 and D[5, 3] == 0
        assert (D == D.T).all()
        ref = np.array([[math.dist(a, b) for b in data.astype(np.float64)] for a in data.astype(np.float64)])
        np.testing.assert_allclose(D, ref, rtol=1e-14, atol=0)
    assert persp.pairwise_distances(X[3:8])[0, 4] == pytest.approx(1e-9 * math.sqrt(384), rel=1e-6)
    # the row blocks (bounded memory) give the same matrix as one block
    assert (persp.pairwise_distances(X, block_elems=1000) == persp.pairwise_distances(X)).all()


def test_classical_mds_recovers_planar_distances():
    rng = np.random.default_rng(0)
    P = rng.normal(size=(7, 2)) * [3.0, 1.0]
    D = persp.pairwise_distances(P)
    X = persp.classical_mds(D, 2)
    DX = persp.pairwise_distances(X)
    assert (np.diag(DX) == 0).all()  # exactly, on any CPU
    # eigh's rounding (LAPACK, CPU-dependent) is ~1e-14 here; 1e-10 leaves it 10^4 of room
    assert np.allclose(DX, D, rtol=0, atol=1e-10)
    assert np.allclose(X.mean(axis=0), 0, atol=1e-10)  # centred
    assert X[:, 0].var() >= X[:, 1].var()  # first axis carries the most variance
    assert np.allclose(persp.classical_mds(D[::-1, ::-1], 2)[::-1], X, atol=1e-8)  # deterministic signs
    # points in 3-D: the 2-D MDS is the projection on the top-2 principal axes
    Q = np.c_[P, 0.01 * rng.normal(size=7)]
    Y = persp.classical_mds(persp.pairwise_distances(Q), 2)
    assert np.allclose(persp.pairwise_distances(Y), D, atol=0.05)
    assert persp.classical_mds(np.zeros((3, 3)), 2).tolist() == [[0, 0]] * 3


def test_parse_steps():
    assert persp.parse_steps("first,middle,last", 5) == [0, 2, 4]
    assert persp.parse_steps("0, -1, 4", 5) == [0, 4]


class FakeEmbedder:
    """One-hot embedding of the flower an answer names (no model)."""
    words = ["rose", "tulip", "lily"]

    def responses(self, texts):
        return torch.tensor([[float(w in t.lower()) for w in self.words] for t in texts])


def test_perspective_with_embed(tmp_path, monkeypatch):
    answers = [["a rose", "a tulip", "a lily"], ["a rose", "a rose", "a lily"], ["a rose", "a rose", "a rose"],
               ["a rose", "a rose", "a rose"]]
    run = write_cell(tmp_path / "run", [dict(RUN_A0, answers=answers)], k=1, p=0.2, transcript=True,
                     config={"embedder": {"name": "fake"}})
    seen = []
    monkeypatch.setattr(persp, "make_embedder", lambda cfg, device: seen.append(cfg) or FakeEmbedder())
    assert rep.main([str(run), "--embed"]) == 0
    assert seen == [{"name": "fake"}]  # the run's own embedder config
    assert (run / "perspective.png").read_bytes()[:8] == PNG
    # identical answers land on the same point of the shared frame
    emb = {t: FakeEmbedder().responses(answers[t]).numpy() for t in (0, 3)}
    coords, steps = persp.perspective_rows(emb)
    assert steps == [0, 3]
    assert np.allclose(coords[3:], coords[0])  # t=3: every agent says rose, like agent 0 at t=0
    assert not np.allclose(coords[1], coords[0])
