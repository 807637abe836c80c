"""The report over any swept keys: cells pooled by every key a grid swept (k, p, noise, ...), phase.csv with
a column per key, --axes choosing the two the heatmaps draw, on GMM grids run through the run path."""
import csv
import itertools
import json
import statistics

import pytest
from conftest import ROOT, run_cli

from tensorsim.analysis import compare as cmp, figures, report as rep
from tensorsim.analysis.dims import Layout, axis_values, choose_layout, key_values
from tensorsim.analysis.runs import PHASE_STATS, Cell, group_cells

GMM = ("agents=gmm", "trial=smoke", "trial.steps=6", "trial.window=3", "trial.replicas=2", "trial.k=[1,2]",
       "trial.p=[0.2,0.7]")
OLD_PHASE_COLUMNS = ["k", "p", "runs", "final_silos_mean", "final_silos_sd", "share_single", "share_stable",
                     "share_unstable", "share_decaying", "median_last_change_step", "mean_stability_window",
                     "mean_final_entropy"]


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """Two GMM grids: k x p x noise (8 cells) and a plain k x p (4 cells), 2 replicas a cell, 6 steps."""
    from hydra import compose, initialize_config_dir

    from tensorsim import run

    root = tmp_path_factory.mktemp("dims")
    for name, extra in (("noise", ["trial.noise=[0,0.5]"]), ("plain", [])):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*GMM, *extra])
        run.simulate(cfg, root / name, hydra_subdir=None)  # the CLI's run, in-process: no interpreter start-up
    return root


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def summary(grid, cell_dir):
    return json.loads((grid / "cells" / cell_dir / "summary.json").read_text())


def test_phase_csv_has_a_row_per_k_p_noise_cell(grids, tmp_path):
    out = tmp_path / "report"
    assert rep.main([str(grids / "noise"), "--out", str(out), "--window", "3"]) == 0
    header, rows = read_rows(out / "phase.csv")
    assert header == ["k", "p", "noise"] + PHASE_STATS
    cells = list(itertools.product(["1", "2"], ["0.2", "0.7"], ["0", "0.5"]))
    assert [(r["k"], r["p"], r["noise"]) for r in rows] == cells
    for r in rows:
        s = summary(grids / "noise", f"k{r['k']}_p{r['p']}_noise{r['noise']}")
        assert (s["k"], s["p"], s["noise"]) == (int(r["k"]), float(r["p"]), float(r["noise"]))
        assert s["cell_keys"] == ["k", "p", "noise"]
        assert r["runs"] == "2"
        assert float(r["final_silos_mean"]) == pytest.approx(statistics.mean(x["final_n_silos"] for x in s["replicas"]))
    md = (out / "phase.md").read_text()
    assert "# Phase diagram over (k, p, noise)" in md
    assert ("Heatmaps (phase_silos.png, phase_convergence.png): k (rows) × p (columns), one panel per value of "
            "noise.") in md
    assert "| 2 | 0.7 | 0.5 | 2 |" in md


def test_axes_k_noise_draws_k_down_and_noise_across_one_panel_per_p(grids, tmp_path, monkeypatch):
    drawn = {}
    save = figures.save_fig

    def record(fig, path):
        drawn[path.name] = [(ax.get_ylabel(), ax.get_xlabel(), ax.get_title(),
                             [t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()])
                            for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        save(fig, path)

    monkeypatch.setattr(figures, "save_fig", record)
    out = tmp_path / "report"
    stats = rep.report(grids / "noise", out, window=3, axes="k,noise")
    assert drawn["phase_silos.png"] == [
        ("neighbours k", "noise probability", f"mean number of final silos: p={p}", ["1", "2"], ["0", "0.5"])
        for p in ("0.2", "0.7")]
    assert "k (rows) × noise (columns), one panel per value of p." in (out / "phase.md").read_text()
    assert (out / "phase_silos.png").read_bytes()[:4] == b"\x89PNG"
    layout = choose_layout(key_values(list(stats)), "k,noise")
    assert layout == Layout("k", "noise", ("p",))
    for title, ks, noises, grid in figures.phase_grids(stats, "final_silos_mean", layout):
        p = float(title.removeprefix("p="))
        assert ks == [1, 2] and noises == [0, 0.5]
        for (i, k), (j, noise) in itertools.product(enumerate(ks), enumerate(noises)):
            finals = [x["final_n_silos"] for x in summary(grids / "noise", f"k{k}_p{p:g}_noise{noise:g}")["replicas"]]
            assert grid[i, j] == pytest.approx(statistics.mean(finals))


@pytest.mark.parametrize("axes,bad", [("k,graph", "'graph'"), ("k,k", "'k,k'"), ("k,p,noise", "'k,p,noise'")])
def test_a_bad_axes_is_one_line_naming_it_and_the_keys_that_vary(grids, tmp_path, capsys, axes, bad):
    out = tmp_path / "report"
    assert rep.main([str(grids / "noise"), "--out", str(out), "--axes", axes]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --axes {bad} is not allowed: one or two different keys that vary, of k, p, noise"
    assert not out.exists()


def test_plain_k_p_grid_phase_csv_as_before(grids, tmp_path):
    """The columns of old and every value recomputed from the cells' summaries and metrics.csv."""
    grid, out = grids / "plain", tmp_path / "report"
    assert rep.main([str(grid), "--out", str(out), "--window", "3"]) == 0
    header, rows = read_rows(out / "phase.csv")
    assert header == OLD_PHASE_COLUMNS
    assert [(r["k"], r["p"]) for r in rows] == [("1", "0.2"), ("1", "0.7"), ("2", "0.2"), ("2", "0.7")]
    for r in rows:
        s = summary(grid, f"k{r['k']}_p{r['p']}")
        reps = s["replicas"]
        finals = [x["final_n_silos"] for x in reps]
        _, metrics = read_rows(grid / "cells" / f"k{r['k']}_p{r['p']}" / "metrics.csv")
        window = [statistics.mean(float(m["stability"]) for m in metrics if m["replica"] == str(x["replica"])
                                  and int(m["t"]) >= 6 - 3) for x in reps]
        expect = {"runs": len(reps), "final_silos_mean": statistics.mean(finals),
                  "final_silos_sd": statistics.stdev(finals),
                  "median_last_change_step": statistics.median(x["last_change_step"] for x in reps),
                  "mean_stability_window": statistics.mean(window),
                  "mean_final_entropy": statistics.mean(x["final_entropy"] for x in reps),
                  **{f"share_{pat}": sum(x["pattern"] == pat for x in reps) / len(reps)
                     for pat in ("single", "stable", "unstable", "decaying")}}
        assert {c: float(r[c]) for c in expect} == pytest.approx(expect, rel=1e-5)
    assert "k (rows) × p (columns)." in (out / "phase.md").read_text()


def test_compare_matches_cells_on_every_key(grids, tmp_path):
    """The plain grid's runs have noise 0 (their config's trial.noise): they match the noise grid's
    noise=0 cells, and its noise=0.5 cells are its own."""
    result = cmp.compare(grids / "noise", grids / "plain", tmp_path / "cmp")
    assert [key.items for key in result["common"]] == [
        (("k", k), ("p", p), ("noise", 0.0)) for k, p in itertools.product([1, 2], [0.2, 0.7])]
    assert [(key.k, key.p, key["noise"]) for key in result["only_a"]] == [
        (k, p, 0.5) for k, p in itertools.product([1, 2], [0.2, 0.7])]
    assert not result["only_b"]
    header, rows = read_rows(tmp_path / "cmp" / "compare.csv")
    assert header[:4] == ["k", "p", "noise", "metric"] and {r["noise"] for r in rows} == {"0"}


def test_cells_pool_by_every_swept_key_and_runs_that_did_not_sweep_one_take_their_config_value(tmp_path):
    swept = Cell(tmp_path, {"k": 5, "p": 0.5, "noise": 0.1, "graph": "ws-k4-p0.1",
                            "cell_keys": ["k", "p", "graph", "noise"]})
    plain = Cell(tmp_path, {"k": 5, "p": 0.5, "graph": "ws-k4-p0.1", "cell_keys": ["k", "p", "graph"],
                            "config": {"trial": {"noise": 0.1}}})
    other = Cell(tmp_path, {"k": 5, "p": 0.5, "noise": 0.1, "graph": "knn", "cell_keys": ["k", "p", "graph", "noise"]})
    groups = group_cells([swept, other, plain])
    assert [(key.items, len(cs)) for key, cs in groups.items()] == [
        ((("k", 5), ("p", 0.5), ("graph", "ws-k4-p0.1"), ("noise", 0.1)), 2),
        ((("k", 5), ("p", 0.5), ("graph", "knn"), ("noise", 0.1)), 1)]
    assert next(iter(groups)).label() == "k=5, p=0.5, graph=ws-k4-p0.1, noise=0.1"


def test_axis_order_and_default_axes():
    assert axis_values([5, "step0:25,40:5", 1, "beta2-5", None, 5]) == [None, 1, 5, "step0:25,40:5", "beta2-5"]
    assert choose_layout({"k": [1, 2], "p": [0.2, 0.5], "noise": [0, 0.1, 0.3]}) == Layout("k", "p", ("noise",))
    assert choose_layout({"k": [1, 2], "p": [0.5], "noise": [0], "graph": ["knn", "ws", "er"]}) == Layout("k", "graph")
    assert choose_layout({"k": [1, 2], "p": [0.2, 0.5, 0.7], "noise": [0, 0.1], "graph": ["knn", "ws", "er"]},
                         "graph,noise") == Layout("graph", "noise", ("k", "p"))
    assert choose_layout({"k": [1], "p": [0.5], "noise": [0, 0.1]}) == Layout("noise", None)
    assert choose_layout({"k": [1], "p": [0.5]}) == Layout("k", "p")
