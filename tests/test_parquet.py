"""output.format=parquet: streamed row groups, the partial-file discipline, resume, and the readers."""
import csv
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, run_cli

from tensorsim import outputs
from tensorsim.analysis import report as rep
from tensorsim.analysis import runs as runs_mod
from tensorsim.core.populations import build_populations
from tensorsim.errors import UserError

GMM = ["trial=smoke", "agents=gmm", "trial.steps=5", "trial.window=3", "checkpoint.every=2", "seed=4"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resolve_format_and_auto_threshold():
    assert outputs.resolve_format("auto", outputs.AUTO_PARQUET_ROWS - 1) == "csv"
    assert outputs.resolve_format("auto", outputs.AUTO_PARQUET_ROWS) == "parquet"
    assert outputs.resolve_format("csv", 10 ** 9) == "csv" and outputs.resolve_format("parquet", 0) == "parquet"
    # trial=proxy_large with agents written: 100,000 agents x 80 steps
    assert outputs.resolve_format("auto", 100_000 * 80) == "parquet"


def fake_step(t, B=3, n=4):
    g = torch.Generator().manual_seed(t)
    labels = torch.randint(-1, 3, (B, n), generator=g)
    partner = torch.randint(0, n, (B, n), generator=g)
    mirrored = torch.rand(B, n, generator=g) < 0.5
    S = None if t == 0 else torch.rand(B, generator=g, dtype=torch.float64)
    E = torch.rand(B, generator=g, dtype=torch.float64)
    silos = torch.randint(1, 4, (B,), generator=g)
    texts = [f"t{t} answer {i} — ünïcode" for i in range(B * n)]
    return labels, partner, mirrored, S, E, silos, [f"ctx {x}" for x in texts], texts, n


def grid_writers(d, offsets=None):
    pops = build_populations([1, 2], [0.5], 2, seed=0)  # two cells of two replicas: B = 4
    return outputs.make_cell_writers(d, pops, ["rose", "tulip", "lily"], True, True, offsets, "parquet")


def write(writers, steps, every, crash_at=None):
    """Steps as run.simulate writes them: a checkpoint (offsets) after every `every` steps."""
    offsets = None
    for t in steps:
        if t == crash_at:  # killed: open segments keep no footer (the writers stay unclosed), buffers are lost
            return offsets, writers
        for w in writers:
            w.write_step(t, *fake_step(t, B=4))
            w.flush()
        if (t + 1) % every == 0:
            offsets = [w.tell() for w in writers]
    for w in writers:
        w.close({"complete": True})
        w.cleanup()  # as run.py does once every table of the run is in place
    return offsets


def test_segments_resume_byte_identical_and_values(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 5)  # row groups inside segments too: a crash leaves torn files
    write(grid_writers(tmp_path / "whole"), range(7), every=3)
    offsets, killed = write(grid_writers(tmp_path / "crashed"), range(7), every=3, crash_at=5)  # kept unclosed
    cell = tmp_path / "crashed" / "cells" / "k1_p0.5"
    # segment 0: t = 0..2 (closed at the checkpoint); segment 1: t = 3, 4 in row groups, never closed
    assert not (cell / "agents.parquet").exists() and len(list((cell / "agents.parquet.partial").iterdir())) == 2
    with pytest.raises(pa.ArrowInvalid):  # the segment open at the crash has no footer
        pq.ParquetFile(sorted((cell / "agents.parquet.partial").iterdir())[-1])
    write(grid_writers(tmp_path / "crashed", offsets), range(3, 7), every=3)  # resume at the checkpoint t=3
    for c in ("k1_p0.5", "k2_p0.5"):
        for name in ("metrics", "agents", "transcript"):
            a, b = (tmp_path / run / "cells" / c / f"{name}.parquet" for run in ("whole", "crashed"))
            assert a.read_bytes() == b.read_bytes(), (c, name)
            assert not (b.parent / f"{name}.parquet.partial").exists()
    # a completed table cannot be resumed into: its segments are joined and gone, rows would be lost
    with pytest.raises(UserError, match="cannot resume: .*metrics.parquet.partial holds 0 of the 1 segments"):
        grid_writers(tmp_path / "whole", offsets)
    # the values: row order, nulls, names, k and p as in the CSV tables
    f = pq.ParquetFile(tmp_path / "whole" / "cells" / "k2_p0.5" / "agents.parquet")
    assert f.metadata.num_rows == 7 * 2 * 4 and f.num_row_groups > 3  # streamed: several row groups
    rows = f.read().to_pylist()
    labels, partner, mirrored = fake_step(6, B=4)[:3]
    last = rows[-8:]  # t = 6, replicas 0 and 1 of cell k=2 (populations 2 and 3 of the batch)
    assert [(r["replica"], r["t"], r["agent"]) for r in last] == [(r, 6, a) for r in (0, 1) for a in range(4)]
    assert [r["label"] for r in last] == labels[2:].flatten().tolist()
    assert [r["label_name"] for r in last] == [["rose", "tulip", "lily"][v] if v >= 0 else "unlabeled"
                                               for v in labels[2:].flatten().tolist()]
    assert [r["partner"] for r in last] == partner[2:].flatten().tolist()
    assert [r["mirrored"] for r in last] == mirrored[2:].flatten().tolist()
    assert {(r["k"], r["p"]) for r in rows} == {(2, 0.5)}
    m = pq.read_table(tmp_path / "whole" / "cells" / "k2_p0.5" / "metrics.parquet").to_pylist()
    assert [r["stability"] for r in m[:2]] == [None, None]  # t = 0
    assert m[-1]["entropy"] == fake_step(6, B=4)[4][3].item()  # full float64
    tr = pq.read_table(tmp_path / "whole" / "cells" / "k1_p0.5" / "transcript.parquet").to_pylist()
    assert tr[-1]["response"] == fake_step(6, B=4)[7][1 * 4 + 3] and tr[-1]["context"].startswith("ctx t6")


def test_parquet_run_matches_csv_run_and_report_reads_both(tmp_path):
    runs = {}
    for fmt in ("csv", "parquet"):
        runs[fmt] = tmp_path / fmt
        r = run_cli(*GMM, f"output.format={fmt}", "trial.p=[0.2,0.7]", f"hydra.run.dir={runs[fmt]}")
        assert r.returncode == 0, r.stderr[-2000:]
    cell = "cells/k2_p0.2"
    assert json.loads((runs["parquet"] / cell / "summary.json").read_text())["output_format"] == "parquet"
    assert not list(runs["parquet"].rglob("*.csv")) and not list(runs["parquet"].rglob("*.partial"))
    agents_csv = read_csv(runs["csv"] / cell / "agents.csv")
    agents_pq = pq.read_table(runs["parquet"] / cell / "agents.parquet").to_pylist()
    assert [{k: str(int(v) if isinstance(v, bool) else v) for k, v in r.items()} for r in agents_pq] == agents_csv
    metrics_csv = read_csv(runs["csv"] / cell / "metrics.csv")
    metrics_pq = pq.read_table(runs["parquet"] / cell / "metrics.parquet").to_pylist()
    assert [r["stability"] for r in metrics_csv] == ["" if r["stability"] is None else f"{r['stability']:.6f}"
                                                     for r in metrics_pq]
    assert [r["entropy"] for r in metrics_csv] == [f"{r['entropy']:.6f}" for r in metrics_pq]
    # report: the same phase diagram from either format, and silo sizes from agents.parquet
    for fmt, d in runs.items():
        assert rep.main([str(d), "--window", "3"]) == 0, fmt
    assert (runs["csv"] / "phase.csv").read_text() == (runs["parquet"] / "phase.csv").read_text()
    assert (runs["parquet"] / "silo_sizes.png").read_bytes()[:4] == b"\x89PNG"
    a = runs_mod.read_agent_labels(runs["csv"] / cell / "agents.csv")
    b = runs_mod.read_agent_labels(runs["parquet"] / cell / "agents.parquet")
    assert a.keys() == b.keys() and all((a[r] == b[r]).all() for r in a)


CRASHER = (
    "import os, signal, sys, runpy\n"
    "import tensorsim.outputs as o\n"
    "o.ROW_GROUP_ROWS = 7  # several row groups per segment: the killed one is torn mid-segment\n"
    "import tensorsim.agents.gmm as g\n"
    "crash, orig = int(os.environ.get('CRASH_AT', -1)), g.GMMAgents.step\n"
    "def step(self, t):\n"
    "    if t == crash:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return orig(self, t)\n"
    "g.GMMAgents.step = step\n"
    "sys.argv = ['tensorsim'] + sys.argv[1:]\n"
    "runpy.run_module('tensorsim', run_name='__main__')\n")


def run_crasher(args, crash_at=None):
    env = dict(os.environ, CRASH_AT=str(crash_at if crash_at is not None else -1))
    return subprocess.run([sys.executable, "-c", CRASHER, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_kill_9_then_resume_parquet_run_is_byte_identical(tmp_path):
    args = GMM + ["output.format=parquet", "trial.n=9", "trial.k=[2,3]"]
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    assert run_crasher(args + [f"hydra.run.dir={whole}"]).returncode == 0
    r = run_crasher(args + [f"hydra.run.dir={crashed}"], crash_at=3)  # after the checkpoint at t=2
    assert r.returncode == -9
    assert (crashed / "checkpoint.safetensors").exists() and not (crashed / "summary.json").exists()
    assert (crashed / "cells" / "k2_p0.5" / "agents.parquet.partial").is_dir()
    r = run_crasher(["resume=true", f"hydra.run.dir={crashed}"])
    assert r.returncode == 0, r.stderr[-2000:]
    for cell in ("k2_p0.5", "k3_p0.5"):
        for f in ("metrics.parquet", "agents.parquet", "silos.png"):
            assert (crashed / "cells" / cell / f).read_bytes() == (whole / "cells" / cell / f).read_bytes(), (cell, f)
        assert not (crashed / "cells" / cell / "transcript.parquet").exists()  # GMM agents write no text
    assert pq.ParquetFile(whole / "cells" / "k2_p0.5" / "agents.parquet").num_row_groups > 2


def test_analyze_reads_a_transcript_parquet(tmp_path):
    from tensorsim.analysis import analyze as an

    recs = [{"replica": 0, "t": t, "agent": a, "context": None, "response": f"The prettiest flower is the {w}."}
            for t, row in enumerate([["rose", "tulip", "lily"], ["rose", "rose", "lily"], ["rose"] * 3])
            for a, w in enumerate(row)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "t.parquet")
    assert an.main([str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "a")]) == 0
    assert an.main([str(tmp_path / "t.parquet"), "--out", str(tmp_path / "b")]) == 0
    for f in ("metrics.csv", "agents.csv"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    assert read_csv(tmp_path / "b" / "metrics.csv")[-1]["n_silos"] == "1"
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert an.main([str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "c")]) == 2


def to_parquet(d):
    """A cell directory's tables rewritten as Parquet (as output.format=parquet would have written them)."""
    import pyarrow.csv as pacsv

    for name in ("metrics", "agents"):
        pq.write_table(pacsv.read_csv(d / f"{name}.csv"), d / f"{name}.parquet")
        (d / f"{name}.csv").unlink()
    recs = [json.loads(x) for x in open(d / "transcript.jsonl")]
    pq.write_table(pa.Table.from_pylist(recs), d / "transcript.parquet")
    (d / "transcript.jsonl").unlink()


def test_report_embed_reads_parquet_transcript_and_agents(tmp_path, monkeypatch):
    from test_report import RUN_A0, FakeEmbedder, write_cell

    from tensorsim.analysis import perspective as persp

    answers = [["a rose", "a tulip", "a lily"], ["a rose", "a rose", "a lily"], ["a rose"] * 3, ["a rose"] * 3]
    runs = {}
    for fmt in ("csv", "parquet"):
        runs[fmt] = write_cell(tmp_path / fmt, [dict(RUN_A0, answers=answers)], k=1, p=0.2, transcript=True,
                               config={"embedder": {"name": "fake"}})
    to_parquet(runs["parquet"])
    drawn = {}
    monkeypatch.setattr(persp, "make_embedder", lambda cfg, device: FakeEmbedder())
    monkeypatch.setattr(persp, "perspective_figure", lambda path, rows: drawn.setdefault(path.parent.name, rows))
    for fmt, d in runs.items():
        assert rep.main([str(d), "--embed", "--window", "2"]) == 0
    (_, emb_c, lab_c, names_c), = drawn["csv"]
    (_, emb_p, lab_p, names_p), = drawn["parquet"]
    assert names_p == names_c == ["flower0", "flower1", "flower2"]
    assert all((emb_c[t] == emb_p[t]).all() and (lab_c[t] == lab_p[t]).all() for t in emb_c)
    assert (runs["csv"] / "phase.csv").read_text() == (runs["parquet"] / "phase.csv").read_text()
