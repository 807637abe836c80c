"""Social graphs (trial.graph, graph.mix): fixed networks restrict whom an agent takes an answer from."""
from __future__ import annotations

import pytest
import torch
from conftest import ROOT, run_cli
from sim_helpers import drop_columns, gmm_cfg, gmm_run, rows, tiny_llm_agents

from tensorsim.config import validate
from tensorsim.core import graph, social
from tensorsim.core.populations import build_populations
from tensorsim.errors import UserError

TABLES = ("metrics.csv", "agents.csv")
WS = "{ws:{k:4,p:0.2}}"


_cfg, _run, _rows, _drop = gmm_cfg, gmm_run, rows, drop_columns


def _edges(path) -> dict[int, set[tuple[int, int]]]:
    out: dict[int, set] = {}
    for r in _rows(path):
        i, j = int(r["i"]), int(r["j"])
        out.setdefault(int(r["replica"]), set()).update({(i, j), (j, i)})
    return out


# ------------------------------------------------------------------------------------------- graphs

def test_generators_draw_the_graph_of_each_replica_from_its_seed():
    n = 40
    seeds = torch.tensor([11, 12])
    for value, check in [
        ("complete", lambda deg, E: bool((deg == n - 1).all())),
        ({"ws": {"k": 4, "p": 0.0}}, lambda deg, E: bool((deg == 4).all())),  # unrewired: the ring lattice
        ({"ws": {"k": 4, "p": 0.3}}, lambda deg, E: E == n * 2),  # rewiring keeps the number of edges
        ({"ba": {"m": 2}}, lambda deg, E: E == 2 * (n - 2) and bool((deg >= 2).all())),
        ({"sbm": {"sizes": [20, 20], "p_in": 1.0, "p_out": 0.0}}, lambda deg, E: bool((deg == 19).all())),
        ({"er": {"p": 0.0}}, lambda deg, E: E == 0),
    ]:
        g = social.build([value], [0, 0], seeds, n)
        for b in range(2):
            E = int(g.deg[b].sum()) // 2
            assert check(g.deg[b], E), (value, b)
            row = g.nbrs[b]
            valid = row >= 0
            assert int(valid.sum(-1).ne(g.deg[b]).sum()) == 0  # deg counts the row's neighbours
            assert not bool((row == torch.arange(n)[:, None]).any())  # no self-loops
            # symmetric: j in i's list iff i in j's
            pairs = {(i, j) for i in range(n) for j in row[i][valid[i]].tolist()}
            assert pairs == {(j, i) for i, j in pairs}
        again = social.build([value], [0, 0], seeds, n)
        assert torch.equal(again.nbrs, g.nbrs)  # a pure function of the seeds
    ws = social.build([{"ws": {"k": 4, "p": 0.5}}], [0, 0], seeds, n)
    assert not torch.equal(ws.nbrs[0], ws.nbrs[1])  # replicas draw their own graphs


def test_sbm_blocks_hold_their_agents_together():
    g = social.build([{"sbm": {"sizes": [10, 20], "p_in": 0.8, "p_out": 0.0}}], [0], torch.tensor([3]), 30)
    block = (torch.arange(30) >= 10).long()
    nb = g.nbrs[0]
    ok = nb < 0
    assert bool((ok | (block[nb.clamp_min(0)] == block[:, None])).all())


def test_nearest_within_a_complete_graph_is_knn_exactly_ties_included():
    from tensorsim.agents.gmm_neighbours import knn_brute

    x = torch.randn(3, 25, 6)
    x[:, 4] = x[:, 9]  # exact ties must go to the lower index, as in graph.knn
    x[:, 17] = x[:, 2]
    complete = social.build(["complete"], [0, 0, 0], torch.tensor([1, 2, 3]), 25)
    assert torch.equal(social.nearest_within(x, complete.nbrs, 7), graph.knn(x, 7))
    w = torch.rand(3, 25, 5, dtype=torch.float64)
    w[:, 3] = w[:, 8]
    assert torch.equal(social.nearest_within(w, complete.nbrs, 6), knn_brute(w, 6))
    # a small chunk budget changes nothing
    assert torch.equal(social.nearest_within(x, complete.nbrs, 7, budget=64), graph.knn(x, 7))


def test_partners_are_graph_neighbours_and_lonely_agents_keep_their_own():
    n = 12
    g = social.SocialGraphs(*social.neighbour_lists([torch.tensor([[0, 1], [1, 2], [2, 3], [5, 6]])], n),
                            torch.tensor([True]))
    seeds = torch.tensor([5])
    x = torch.randn(1, n, 3)
    for t in range(20):
        for mix in social.MIXES:
            p = social.partners(seeds, torch.tensor([2]), t, x, None, g, mix)[0]
            for i in range(n):
                nbrs = set(g.nbrs[0, i][g.nbrs[0, i] >= 0].tolist())
                assert (p[i].item() in nbrs) if nbrs else p[i].item() == i
    # knn_within with k=1 takes the nearest graph neighbour: agent 1's neighbours are 0 and 2
    x = torch.zeros(1, n, 1)
    x[0, 2] = 0.1
    x[0, 0] = 5.0
    assert social.partners(seeds, torch.tensor([1]), 0, x, None, g, "knn_within")[0, 1].item() == 2


# --------------------------------------------------------------------------------------------- runs

def test_complete_graph_with_knn_within_equals_knn_byte_for_byte(tmp_path):
    common = ("trial.n=12", "trial.steps=8", "trial.replicas=2", "trial.k=3")
    knn = _run(tmp_path, "knn", *common)
    complete = _run(tmp_path, "complete", *common, "trial.graph=complete", "graph.mix=knn_within")
    for table in TABLES:
        assert (complete / table).read_bytes() == (knn / table).read_bytes()
    uniform = _run(tmp_path, "uniform", *common, "trial.graph=complete")  # all 11 others are candidates
    assert (uniform / "agents.csv").read_bytes() != (knn / "agents.csv").read_bytes()


def test_complete_graph_with_knn_within_equals_knn_for_llm_agents(tiny_models):
    def agents(*overrides):
        return tiny_llm_agents(tiny_models, "trial.k=2", "trial.p=0.2", *overrides)

    knn, complete = agents(), agents("trial.graph=complete", "graph.mix=knn_within")
    for t in range(3):
        a, b = knn.step(t), complete.step(t)
        assert a.contexts == b.contexts and a.responses == b.responses
        assert torch.equal(a.partner, b.partner) and torch.equal(a.mirrored, b.mirrored)


def test_agents_take_answers_only_from_graph_neighbours(tmp_path):
    d = _run(tmp_path, "ws", "trial.n=16", "trial.steps=10", "trial.replicas=2", "trial.p=0.3", f"trial.graph={WS}")
    edges = _edges(d / "graph_edges.csv")
    assert sorted(edges) == [0, 1] and all(len(e) == 16 * 4 for e in edges.values())  # 32 edges, both ways
    shares = [r for r in _rows(d / "agents.csv") if r["mirrored"] == "0"]
    assert len(shares) > 50
    for r in shares:
        assert (int(r["agent"]), int(r["partner"])) in edges[int(r["replica"])]


def test_a_graph_sweep_packs_cells_that_equal_their_runs_alone(tmp_path):
    common = ("trial.n=14", "trial.steps=6", "trial.replicas=2")
    grid = _run(tmp_path, "grid", *common, f"trial.graph=[knn,{WS},{{ba:{{m:2}}}}]", "graph.mix=knn_within")
    assert sorted(p.name for p in (grid / "cells").iterdir()) == [
        "k2_p0.5_graphba-m2", "k2_p0.5_graphknn", "k2_p0.5_graphws-k4-p0.2"]
    for value, name in [("knn", "knn"), (WS, "ws-k4-p0.2"), ("{ba:{m:2}}", "ba-m2")]:
        alone = _run(tmp_path, name, *common, f"trial.graph={value}", "graph.mix=knn_within")
        cell = grid / "cells" / f"k2_p0.5_graph{name}"
        for table in TABLES:
            assert _drop(cell / table, ("k", "p", "graph")) == _drop(alone / table, ()), (name, table)
        if name != "knn":
            assert (cell / "graph_edges.csv").read_bytes() == (alone / "graph_edges.csv").read_bytes()
    assert not (grid / "cells" / "k2_p0.5_graphknn" / "graph_edges.csv").exists()


def test_a_grid_of_all_four_dimensions_equals_its_cells_run_alone(tmp_path):
    common = ("trial.n=10", "trial.steps=5", "trial.replicas=2", "trial.noise_mode=swap", "graph.mix=knn_within",
              "trial.types=[{share:0.3,p:1.0,name:stubborn},{share:0.7}]", "trial.k={step:{0:3,2:1}}")
    grid = _run(tmp_path, "grid", *common, "trial.noise=[0,0.3]", f"trial.graph=[knn,{WS}]")
    for noise in ("0", "0.3"):
        for value, name in [("knn", "knn"), (WS, "ws-k4-p0.2")]:
            alone = _run(tmp_path, f"{noise}{name}", *common, f"trial.noise={noise}", f"trial.graph={value}")
            cell = grid / "cells" / f"kstep0-3_2-1_p0.5_noise{noise}_graph{name}"
            for table in TABLES:
                assert _drop(cell / table, ("k", "p", "noise", "graph")) == _drop(alone / table, ()), (cell, table)


def test_an_edge_list_file_is_the_graph_and_isolated_agents_keep_their_answer(tmp_path):
    f = tmp_path / "edges.txt"
    f.write_text("# a path 0-1-2-3 and a pair\n0 1\n1,2\n2 3  # trailing comment\n\n4 5\n5 4\n")
    d = _run(tmp_path, "file", "trial.n=8", "trial.steps=6", "trial.p=0.0", f"trial.graph={{file:{f}}}")
    assert _edges(d / "graph_edges.csv")[0] == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (4, 5), (5, 4)}
    rows = _rows(d / "agents.csv")
    for r in rows:
        if r["agent"] in ("6", "7"):  # no neighbours: its own answer
            assert r["partner"] == r["agent"]
        else:
            assert r["partner"] != r["agent"]


def test_small_world_trial_runs_on_the_proxy(tmp_path):
    d = _run(tmp_path, "sw", "trial=small_world", "trial.steps=10", "trial.window=4")
    assert sorted(p.name for p in (d / "cells").iterdir()) == [
        "k5_p0.5_graphknn", "k5_p0.5_graphws-k6-p0", "k5_p0.5_graphws-k6-p0.1", "k5_p0.5_graphws-k6-p1"]
    lattice = _edges(d / "cells" / "k5_p0.5_graphws-k6-p0" / "graph_edges.csv")[0]
    assert lattice == {(i, (i + s) % 30) for i in range(30) for s in (-3, -2, -1, 1, 2, 3)}


# ------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("override,words", [
    ("trial.graph=grid", "trial.graph='grid' is not allowed: knn, complete, {er: {p: P}}"),
    ("trial.graph={er:{p:1.5}}", "trial.graph.er.p=1.5 is not allowed: a probability in [0, 1]"),
    ("trial.graph={ws:{k:3,p:0.1}}", "trial.graph.ws.k=3 is not allowed: an even integer with 2 <= k < trial.n=6"),
    ("trial.graph={ws:{k:4}}", "exactly the keys k, p"),
    ("trial.graph={ba:{m:6}}", "trial.graph.ba.m=6 is not allowed: an integer with 1 <= m < trial.n=6"),
    ("trial.graph={sbm:{sizes:[3,4],p_in:0.5,p_out:0.1}}", "a list of block sizes >= 1 summing to trial.n=6"),
    ("trial.graph=[knn,{er:{p:-1}}]", "trial.graph.er.p=-1 is not allowed"),
    ("graph.mix=nearest", "graph.mix='nearest' is not allowed: one of uniform, knn_within"),
])
def test_bad_graphs_are_one_line_errors(override, words):
    with pytest.raises(UserError) as e:
        validate(_cfg(override))
    assert "\n" not in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("text,words", [
    ("0 1\n1 6\n", "line 2: agent 6 is out of range: indices run from 0 to trial.n-1=5"),
    ("0 1\n2 2\n", "line 2: self-loop 2-2 is not allowed"),
    ("0 1\n-1 3\n", "line 2: agent -1 is out of range"),
    ("0 1 2\n", "line 1: '0 1 2' is not allowed: two agent indices 'i j'"),
    ("a b\n", "line 1: 'a b' is not allowed"),
    ("# nothing\n", "holds no edges"),
])
def test_bad_graph_files_are_one_line_errors(tmp_path, text, words):
    f = tmp_path / "g.txt"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        build_populations(2, 0.5, 1, 0, n=6, graph={"file": str(f)})
    assert "\n" not in str(e.value) and words in str(e.value) and "g.txt" in str(e.value)


def test_cli_refuses_a_bad_graph_file_with_exit_2(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text("0 1\n3 3\n")
    r = run_cli("agents=gmm", "trial=smoke", f"trial.graph={{file:{f}}}", f"hydra.run.dir={tmp_path / 'run'}",
                timeout=120)
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "self-loop 3-3" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "metrics.csv").exists()
    with pytest.raises(UserError, match="none.txt'.* cannot be read"):
        validate(_cfg(f"trial.graph={{file:{tmp_path / 'none.txt'}}}"))


def test_resume_continues_on_the_same_graph_and_refuses_an_edited_edge_file(tmp_path):
    import json
    import os
    import subprocess
    import sys

    f = tmp_path / "edges.txt"
    ring = "0 1\n1 2\n2 3\n3 4\n4 5\n5 0\n"
    f.write_text(ring)
    common = ("agents=gmm", "trial=smoke", "output.plots=false", "trial.n=6", "trial.steps=6", "checkpoint.every=2",
              f"trial.graph={{file:{f}}}")
    whole = tmp_path / "whole"
    assert run_cli(*common, f"hydra.run.dir={whole}", timeout=120).returncode == 0
    part = tmp_path / "part"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), TENSORSIM_FAULTS=json.dumps({"signal": ["TERM", 3]}))
    r = subprocess.run([sys.executable, "-m", "fault_inject", *common, f"hydra.run.dir={part}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 5, r.stderr[-2000:]  # stopped with a checkpoint
    f.write_text(ring.replace("0 1", "0 2"))
    edited = run_cli(*common, "resume=true", f"hydra.run.dir={part}", timeout=120)
    assert edited.returncode == 2 and "other social graphs than the checkpoint's" in edited.stderr, edited.stderr
    f.write_text(ring)
    ok = run_cli(*common, "resume=true", f"hydra.run.dir={part}", timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    for table in TABLES + ("graph_edges.csv",):
        assert (part / table).read_bytes() == (whole / table).read_bytes()
