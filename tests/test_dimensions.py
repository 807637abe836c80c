"""Experiment dimensions beyond the paper (README "Asking your own question"): schedules of k and p,
mixed populations (agent types, Beta-distributed p), miscommunication noise, and their one-line errors.
GMM agents wherever the behaviour does not depend on the agent kind (no model loads); the tiny random
LLaMA of tests/tiny_models.py for what LLM agents do with noise and types."""
import math

import pytest
import torch
from conftest import ROOT, run_cli
from sim_helpers import drop_columns, gmm_cfg, gmm_run, rows, tiny_llm_agents
from hydra import compose, initialize_config_dir

from tensorsim import run
from tensorsim.config import validate
from tensorsim.core import interact, rng, schedules
from tensorsim.core.populations import (assign_types, beta_draws, build_populations, trial_populations,
                                        type_counts)
from tensorsim.errors import UserError

TABLES = ("metrics.csv", "agents.csv")


_cfg, _run, _rows, _drop = gmm_cfg, gmm_run, rows, drop_columns


def _bytes(d, sub=""):
    return {t: (d / sub / t).read_bytes() for t in TABLES}


# ---------------------------------------------------------------------------------------------------
# 1. schedules

def test_schedule_forms_evaluate_per_step(tmp_path):
    T = 5
    assert schedules.evaluate("trial.k", 3, T).tolist() == [3.0] * 5
    assert schedules.evaluate("trial.k", {"step": {0: 25, 2: 5, 4: 1}}, T).tolist() == [25, 25, 5, 5, 1]
    assert schedules.evaluate("trial.k", {"linear": [25, 1]}, T).tolist() == [25, 19, 13, 7, 1]
    cos = schedules.evaluate("trial.p", {"cosine": [1.0, 0.0]}, T)
    assert torch.allclose(cos, torch.tensor([1.0, 0.8535534, 0.5, 0.1464466, 0.0], dtype=torch.float64))
    f = tmp_path / "p.csv"
    f.write_text("p\n0.1\n0.2\n0.3\n0.4\n0.5\n0.6\n")  # a header, one extra value (ignored)
    assert schedules.p_values({"csv": str(f)}, T).tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    # k rounds to the nearest integer, halves to even: 4, 3.25, 2.5, 1.75, 1 -> 4, 3, 2, 2, 1
    assert schedules.k_values({"linear": [4, 1]}, T, n=10).tolist() == [4, 3, 2, 2, 1]
    assert schedules.label({"step": {0: 25, 40: 5}}) == "step0-25_40-5"
    assert schedules.label({"linear": [25, 1]}) == "linear25-1"
    assert schedules.label({"csv": str(f)}) == "csv-p"


def test_populations_evaluate_k_and_p_at_each_step():
    pops = build_populations([2, {"step": {0: 1, 2: 3}}], [{"linear": [0.0, 1.0]}], 2, 0, steps=3, n=6)
    assert pops.cells == [(2, "linear0-1"), ("step0-1_2-3", "linear0-1")]
    assert pops.k.tolist() == [2, 2, 3, 3]  # the largest k each population uses: sizes neighbour lists
    assert [pops.k_at(t).tolist() for t in range(3)] == [[2, 2, 1, 1], [2, 2, 1, 1], [2, 2, 3, 3]]
    assert [pops.p_at(t).tolist() for t in range(3)] == [[0.0] * 4, [0.5] * 4, [1.0] * 4]
    assert pops.k_at(99).tolist() == [2, 2, 3, 3]  # past the last step: the last value


@pytest.mark.parametrize("k,p", [("{step:{0:2}}", "0.5"), ("{linear:[2,2]}", "{cosine:[0.5,0.5]}"),
                                 ("2", "{step:{0:0.5,3:0.5}}"), ("2", "CSV")])
def test_constant_schedule_equals_the_constant_byte_for_byte(tmp_path, k, p):
    if p == "CSV":
        f = tmp_path / "half.csv"
        f.write_text("\n".join(["0.5"] * 8) + "\n")
        p = "{csv:" + str(f) + "}"
    plain = _bytes(_run(tmp_path, "plain", "trial.steps=8", "trial.k=2", "trial.p=0.5"))
    scheduled = _bytes(_run(tmp_path, "sched", "trial.steps=8", f"trial.k={k}", f"trial.p={p}"))
    assert scheduled == plain
    assert [r["k_t"] for r in _rows(tmp_path / "plain" / "metrics.csv")] == ["2"] * 8


def test_a_schedule_changes_k_and_p_from_its_breakpoint_on(tmp_path):
    """k=1, p=0 until step 4, then k=3, p=1: the first four steps are those of the constant k=1, p=0 run,
    after it every agent mirrors; metrics.csv shows k_t and p_t."""
    base = _run(tmp_path, "base", "trial.n=8", "trial.steps=8", "trial.k=1", "trial.p=0")
    sched = _run(tmp_path, "sched", "trial.n=8", "trial.steps=8", "trial.k={step:{0:1,4:3}}",
                 "trial.p={step:{0:0,4:1}}")
    a, b = _rows(base / "agents.csv"), _rows(sched / "agents.csv")
    early = [r for r in a if int(r["t"]) < 4]
    assert [r for r in b if int(r["t"]) < 4] == early
    assert all(r["mirrored"] == "1" and r["partner"] == r["agent"] for r in b if int(r["t"]) >= 4)
    m = _rows(sched / "metrics.csv")
    assert [(r["k_t"], r["p_t"]) for r in m] == [("1", "0")] * 4 + [("3", "1")] * 4


def test_a_grid_mixing_schedules_and_constants_equals_its_cells_run_alone(tmp_path):
    ks, ps = ["2", "{linear:[4,1]}"], ["0.5", "{step:{0:0.9,3:0.1}}"]
    common = ("trial.n=8", "trial.steps=6", "trial.replicas=2")
    grid = _run(tmp_path, "grid", *common, f"trial.k=[{','.join(ks)}]", f"trial.p=[{','.join(ps)}]")
    cells = sorted(p.name for p in (grid / "cells").iterdir())
    assert cells == ["k2_p0.5", "k2_pstep0-0.9_3-0.1", "klinear4-1_p0.5", "klinear4-1_pstep0-0.9_3-0.1"]
    for i, k in enumerate(ks):
        for j, p in enumerate(ps):
            alone = _run(tmp_path, f"alone{i}{j}", *common, f"trial.k={k}", f"trial.p={p}")
            cell = grid / "cells" / cells[2 * i + j]
            for table in TABLES:
                assert _drop(cell / table, ("k", "p")) == _drop(alone / table, ()), (cell, table)


@pytest.mark.parametrize("override,words", [
    ("trial.k={linear:[5]}", "linear takes two numbers"),
    ("trial.k={step:{2:3}}", "first step breakpoint must be 0"),
    ("trial.k={linear:[6,1]}", "1 <= k_t < trial.n=6 (k_0 = 6)"),
    ("trial.k={wiggle:[1,2]}", "a number, or one of {step"),
    ("trial.k=2.5", "an integer"),
    ("trial.p={cosine:[0.5,1.5]}", "p_2 = 1.5"),
    ("trial.p={csv:/no/such/file.csv}", "is not a file"),
])
def test_bad_schedules_are_one_line_errors(override, words):
    with pytest.raises(UserError) as e:
        validate(_cfg(override))
    msg = str(e.value)
    assert "\n" not in msg and words in msg and msg.startswith(override.split("=")[0] + "=")


def test_a_short_csv_schedule_is_refused(tmp_path):
    f = tmp_path / "short.csv"
    f.write_text("0.1\n0.2\n")
    with pytest.raises(UserError, match=r"holds 2 values, fewer than trial.steps=3"):
        validate(_cfg("trial.p={csv:" + str(f) + "}"))


# ---------------------------------------------------------------------------------------------------
# 2. mixed populations

def test_type_counts_follow_the_shares_with_largest_remainders():
    assert type_counts([0.2, 0.8], 6) == [1, 5]  # 1.2 and 4.8: the larger remainder gets the spare agent
    assert type_counts([0.5, 0.5], 7) == [4, 3]  # equal remainders: the lower type
    assert type_counts([1 / 3] * 3, 10) == [4, 3, 3]
    assert type_counts([0.0, 1.0], 5) == [0, 5]


def test_types_are_drawn_per_population_with_exact_counts():
    seeds = rng.mix(0, torch.arange(4))
    types = assign_types(seeds, [3, 7])  # [B, n]
    assert types.shape == (4, 10) and (types == 0).sum(-1).tolist() == [3, 3, 3, 3]
    assert len({tuple(row) for row in types.tolist()}) > 1  # each population its own draw
    assert torch.equal(assign_types(seeds[2:3], [3, 7])[0], types[2])  # independent of the batch


def test_per_agent_p_equal_everywhere_equals_the_population_p(tmp_path):
    """Two types, both at the population's p (and one also at its k): the same run, byte for byte, but
    for the type column of agents.csv."""
    plain = _run(tmp_path, "plain", "trial.n=10", "trial.steps=6", "trial.k=3", "trial.p=0.4")
    typed = _run(tmp_path, "typed", "trial.n=10", "trial.steps=6", "trial.k=3", "trial.p=0.4",
                 "trial.types=[{share:0.3,p:0.4,k:3,name:a},{share:0.7,p:0.4,name:b}]")
    assert (typed / "metrics.csv").read_bytes() == (plain / "metrics.csv").read_bytes()
    assert _drop(typed / "agents.csv", ("type",)) == _drop(plain / "agents.csv", ("type",))
    types = [r["type"] for r in _rows(typed / "agents.csv") if r["t"] == "0"]
    assert sorted(types) == ["a"] * 3 + ["b"] * 7
    assert {r["type"] for r in _rows(plain / "agents.csv")} == {"all"}


def test_stubborn_agents_always_mirror_and_keep_their_type(tmp_path):
    d = _run(tmp_path, "stubborn", "trial.n=10", "trial.steps=5", "trial.p=0.0",
             "trial.types=[{share:0.2,p:1.0,name:stubborn},{share:0.8}]", "trial.replicas=2")
    rows = _rows(d / "agents.csv")
    stubborn = [r for r in rows if r["type"] == "stubborn"]
    assert len(stubborn) == 2 * 5 * 2  # 2 of 10 agents, 5 steps, 2 replicas
    assert all(r["mirrored"] == "1" and r["partner"] == r["agent"] for r in stubborn)
    assert all(r["mirrored"] == "0" for r in rows if r["type"] == "type1")  # p=0 for the rest
    for rep in ("0", "1"):  # a type is an agent's for the whole run
        per_step = {r["t"]: {r["agent"] for r in stubborn if r["replica"] == rep} for r in rows}
        assert len({frozenset(v) for v in per_step.values()}) == 1
    # p_t is the agents' mean: 0.2 * 1 + 0.8 * 0
    assert {r["p_t"] for r in _rows(d / "metrics.csv")} == {"0.2"}


def test_per_type_k_is_per_agent():
    pops = build_populations(5, 0.5, 1, 0, steps=2, n=10,
                             types=[{"share": 0.5, "k": 1}, {"share": 0.5}])
    k = pops.k_at(0)  # [B, n]
    assert k.shape == (1, 10) and sorted(k[0].tolist()) == [1] * 5 + [5] * 5
    assert pops.k.tolist() == [5]
    # a partner of a k=1 agent is its nearest neighbour; others pick among their 5
    nb = torch.arange(10).roll(-1).repeat(1, 10, 1)[..., :5]  # [1, 10, 5]
    partner = interact.pick_partners(pops.seeds, nb, k, 0)
    ones = k[0] == 1
    assert torch.equal(partner[0, ones], nb[0, ones, 0])


def test_beta_p_draws_have_the_beta_moments_and_are_keyed_on_the_seed():
    seeds = rng.mix(0, torch.arange(3))
    for a, b in [(2.0, 5.0), (0.5, 0.5), (30.0, 10.0)]:
        p = beta_draws(a, b, seeds, 20_000).double()  # [3, n]
        assert ((p >= 0) & (p <= 1)).all()  # float32 may round draws at the edges of Beta(0.5, 0.5) to 0 or 1
        mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
        assert p.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(var / 60_000))
        assert p.var().item() == pytest.approx(var, rel=0.05)
    again = beta_draws(2.0, 5.0, seeds[1:2], 20_000)
    assert torch.equal(again[0], beta_draws(2.0, 5.0, seeds, 20_000)[1])


def test_a_grid_of_beta_and_constant_p_equals_its_cells_run_alone(tmp_path):
    common = ("trial.n=8", "trial.steps=5", "trial.replicas=2", "trial.k=3")
    grid = _run(tmp_path, "grid", *common, "trial.p=[0.5,{beta:[2,5]}]")
    assert sorted(p.name for p in (grid / "cells").iterdir()) == ["k3_p0.5", "k3_pbeta2-5"]
    for p, cell in [("0.5", "k3_p0.5"), ("{beta:[2,5]}", "k3_pbeta2-5")]:
        alone = _run(tmp_path, cell, *common, f"trial.p={p}")
        for table in TABLES:
            assert _drop(grid / "cells" / cell / table, ("k", "p")) == _drop(alone / table, ())
    pops = trial_populations(_cfg(*common, "trial.p={beta:[2,5]}").trial, 0)
    assert pops.p_at(0).shape == (2, 8) and len(set(pops.p_at(0).flatten().tolist())) == 16


@pytest.mark.parametrize("override,words", [
    ("trial.types=[{share:0.5},{share:0.4}]", "trial.types shares sum to 0.9, not 1"),
    ("trial.types=[{share:1.0,p:2}]", "trial.types[0].p=2 is not allowed: a probability in [0, 1]"),
    ("trial.types=[{share:1.0,k:6}]", "trial.types[0].k=6 is not allowed"),
    ("trial.types=[{share:1.0,mood:sad}]", "keys share, p, k, name only"),
    ("trial.types=[{share:0.5,name:x},{share:0.5,name:x}]", "distinct type names"),
    ("trial.p={beta:[0,1]}", "{beta: [a, b]} with a > 0 and b > 0"),
])
def test_bad_types_are_one_line_errors(override, words):
    with pytest.raises(UserError) as e:
        validate(_cfg(override))
    assert "\n" not in str(e.value) and words in str(e.value)


# ---------------------------------------------------------------------------------------------------
# 3. miscommunication noise

def _gmm(*overrides):
    from tensorsim.agents.gmm import GMMAgents

    cfg = _cfg(*overrides)
    return GMMAgents(cfg, trial_populations(cfg.trial, cfg.seed), torch.device("cpu"))


def test_noise_zero_changes_nothing_alone_or_packed_with_noisy_cells(tmp_path):
    plain = _run(tmp_path, "plain", "trial.n=10", "trial.steps=6", "trial.replicas=2")
    zero = _run(tmp_path, "zero", "trial.n=10", "trial.steps=6", "trial.replicas=2", "trial.noise=0",
                "trial.noise_mode=swap")
    assert _bytes(zero) == _bytes(plain)
    # packed next to a noisy cell, the noise-free cell still runs as if alone (its coins are all 0)
    grid = _run(tmp_path, "grid", "trial.n=10", "trial.steps=6", "trial.replicas=2", "trial.noise=[0,0.5]",
                "trial.noise_mode=swap")
    for table in TABLES:
        assert _drop(grid / "cells" / "k2_p0.5_noise0" / table, ("k", "p", "noise")) == _drop(plain / table, ())
    noisy = _rows(grid / "cells" / "k2_p0.5_noise0.5" / "agents.csv")
    share = sum(r["garbled"] == "1" for r in noisy) / len(noisy)
    assert 0.3 < share < 0.7 and {r["noise"] for r in noisy} == {"0.5"}


def test_noise_one_with_drop_freezes_every_gmm_agent():
    """GMM agents: drop means the agent received nothing and learns nothing, so RAG and weights stay
    as they were (no EM step on the unchanged RAG either), whoever it asked."""
    agents = _gmm("trial.n=8", "trial.noise=1", "trial.noise_mode=drop", "trial.replicas=2")
    w0, rag0 = agents.w.clone(), agents.rag.clone()
    for t in range(4):
        rec = agents.step(t)
        assert rec.garbled.all()
    assert torch.equal(agents.w, w0) and torch.equal(agents.rag, rag0)


@pytest.mark.parametrize("mode", ["swap", "kb"])
def test_gmm_garbled_answers_come_from_the_step_or_the_initial_rag(mode):
    from tensorsim.agents.gmm import initial_points

    agents = _gmm("trial.n=8", "trial.noise=1", f"trial.noise_mode={mode}", "trial.replicas=2")
    rag0 = agents.rag.clone()
    if mode == "kb":  # the initial knowledge base, recomputed from its draws, is the initial RAG
        j = torch.arange(8).repeat(2, 1).roll(3, -1)
        s = torch.arange(8).repeat(2, 1) % agents.m
        got = initial_points(agents.pops.seeds, j, s, agents.C, agents.D, agents.sigma, agents.eps)
        assert torch.equal(got, rag0[torch.arange(2)[:, None], j, s])
    agents.step(0)
    new = agents.rag[agents.rag != rag0]  # each agent replaced exactly one point
    assert new.numel() <= 2 * 8
    if mode == "kb":  # every point taken in was some agent's initial point
        assert all(bool((rag0 == v).any()) for v in new.tolist())


def test_a_grid_mixing_schedules_types_and_noise_equals_its_cells_run_alone(tmp_path):
    common = ("trial.n=10", "trial.steps=6", "trial.replicas=2", "trial.noise_mode=kb",
              "trial.types=[{share:0.2,p:1.0,name:stubborn},{share:0.8}]")
    grid = _run(tmp_path, "grid", *common, "trial.k=[2,{step:{0:4,3:1}}]", "trial.p=[0.3,{beta:[2,2]}]",
                "trial.noise=[0,0.4]")
    cells = sorted(p.name for p in (grid / "cells").iterdir())
    assert len(cells) == 8
    for k, kname in [("2", "k2"), ("{step:{0:4,3:1}}", "kstep0-4_3-1")]:
        for p, pname in [("0.3", "p0.3"), ("{beta:[2,2]}", "pbeta2-2")]:
            for noise in ("0", "0.4"):
                alone = _run(tmp_path, f"{kname}{pname}{noise}", *common, f"trial.k={k}", f"trial.p={p}",
                             f"trial.noise={noise}")
                cell = grid / "cells" / f"{kname}_{pname}_noise{noise}"
                for table in TABLES:
                    assert _drop(cell / table, ("k", "p", "noise")) == _drop(alone / table, ()), (cell, table)


@pytest.mark.parametrize("override,words", [
    ("trial.noise=1.5", "trial.noise=1.5 is not allowed: a probability in [0, 1]"),
    ("trial.noise=[0,-0.1]", "trial.noise=-0.1 is not allowed"),
    ("trial.noise_mode=blur", "trial.noise_mode='blur' is not allowed: one of drop, swap, kb"),
])
def test_bad_noise_is_a_one_line_error(override, words):
    with pytest.raises(UserError) as e:
        validate(_cfg(override))
    assert "\n" not in str(e.value) and words in str(e.value)


def test_cli_refuses_bad_dimensions_with_exit_2_before_running(tmp_path):
    for override, words in [("trial.types=[{share:0.5},{share:0.6}]", "shares sum to 1.1, not 1"),
                            ("trial.k={linear:[1,9]}", "1 <= k_t < trial.n=6")]:
        r = run_cli("agents=gmm", "trial=smoke", override, f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
        lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr and not (tmp_path / "run" / "metrics.csv").exists()


def test_swap_takes_the_answer_of_the_drawn_agent():
    from tensorsim.agents.gmm import garbled_answers

    seeds = rng.mix(0, torch.arange(2))
    y = torch.randn(2, 7, 3, dtype=torch.float64)
    garbled = torch.tensor([[True] * 7, [False, True] * 3 + [False]])
    out = garbled_answers(y, garbled, "swap", seeds, 4, None, 5)
    j = interact.noise_picks(seeds, rng.NOISE_PICK, 4, 7, 7)
    expect = torch.where(garbled[..., None], y[torch.arange(2)[:, None], j], y)
    assert torch.equal(out, expect)


# ---------------------------------------------------------------------------------------------------
# LLM agents (tiny random models: plumbing and invariants, not behaviour)

_llm = tiny_llm_agents


def test_llm_noise_one_with_drop_freezes_every_context(tiny_models):
    agents = _llm(tiny_models, "trial.noise=1", "trial.noise_mode=drop", "trial.replicas=2")
    ref0 = agents.entry_ref.clone()
    contexts = [agents.step(t).contexts for t in range(3)]
    assert contexts[0] == contexts[1] == contexts[2]
    assert torch.equal(agents.entry_ref, ref0)


def test_llm_noise_swap_and_kb_put_the_drawn_answer_in_the_slot(tiny_models):
    n, m = 6, 5
    for mode in ("swap", "kb"):
        agents = _llm(tiny_models, "trial.noise=1", f"trial.noise_mode={mode}")
        rec = agents.step(0)
        slot = agents.slots[..., 0]  # [1, n]
        got = torch.gather(agents.entry_ref, -1, slot[..., None])[0, :, 0]  # [n] text index in each slot
        j = interact.noise_picks(agents.pops.seeds, rng.NOISE_PICK, 0, n, n)[0]
        if mode == "swap":  # this step's answer of agent j (texts: the KB's n*m, then the step's n answers)
            assert got.tolist() == (n * m + j).tolist()
            assert [agents.texts[i] for i in got.tolist()] == [rec.responses[i] for i in j.tolist()]
        else:  # agent j's initial knowledge-base entry in the same slot
            assert got.tolist() == (j * m + slot[0]).tolist()
        assert rec.garbled.all()


def test_llm_types_and_noise_zero(tiny_models):
    """Stubborn agents (p=1) always mirror; a noise-free population packed with a noisy one takes in
    the same answers as the plain run."""
    typed = _llm(tiny_models, "trial.p=0", "trial.types=[{share:0.5,p:1.0,name:stubborn},{share:0.5}]")
    rec = typed.step(0)
    stubborn = typed.pops.agent_type == 0  # [1, n]
    assert int(stubborn.sum()) == 3 and torch.equal(rec.mirrored, stubborn)
    plain = _llm(tiny_models)
    packed = _llm(tiny_models, "trial.noise=[0,1]")
    for t in range(2):
        a, b = plain.step(t), packed.step(t)
        assert a.contexts == b.contexts[:6] and a.responses == b.responses[:6]
        assert not b.garbled[0].any() and b.garbled[1].all()
    # text indices differ (the packed table holds both populations' answers): compare the texts
    assert ([plain.texts[i] for i in plain.entry_ref[0].flatten().tolist()]
            == [packed.texts[i] for i in packed.entry_ref[0].flatten().tolist()])


@pytest.mark.parametrize("trial,cells", [
    ("schedule_demo", ["k5_p0.5", "k5_pcosine0.9-0.1", "klinear25-1_p0.5", "klinear25-1_pcosine0.9-0.1",
                       "kstep0-25_40-5_p0.5", "kstep0-25_40-5_pcosine0.9-0.1"]),
    ("stubborn", None),
    ("noisy", ["k5_p0.5_noise0", "k5_p0.5_noise0.1", "k5_p0.5_noise0.3"]),
])
def test_dimension_trials_run_with_gmm_agents(tmp_path, trial, cells):
    """The trial files of README "Asking your own question", cut to 12 steps on the proxy."""
    d = tmp_path / trial
    run.simulate(_cfg(f"trial={trial}", "trial.steps=12", "trial.window=4"), d, hydra_subdir=None)
    if cells is None:
        rows = _rows(d / "agents.csv")
        assert sorted(r["type"] for r in rows if r["t"] == "0") == ["mirroring"] * 24 + ["stubborn"] * 6
        assert all(r["mirrored"] == "1" for r in rows if r["type"] == "stubborn")
    else:
        assert sorted(p.name for p in (d / "cells").iterdir()) == cells


def test_report_reads_a_grid_of_schedules_and_noise(tmp_path):
    """A schedule's label stands for its number in the k column, and the swept noise has a column of its own."""
    from tensorsim.analysis import report

    d = _run(tmp_path, "grid", "trial.n=8", "trial.steps=4", "trial.k=[2,{linear:[4,1]}]", "trial.p=0.5",
             "trial.noise=[0,0.2]")
    assert report.main([str(d), "--window", "2"]) == 0
    rows = [(r["k"], r["p"], r["noise"], r["runs"]) for r in _rows(d / "phase.csv")]
    assert rows == [("2", "0.5", "0", "1"), ("2", "0.5", "0.2", "1"), ("linear4-1", "0.5", "0", "1"),
                    ("linear4-1", "0.5", "0.2", "1")]
    assert (d / "phase_silos.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_report_splits_silos_entropy_and_stability_by_type(tmp_path, fmt):
    """Stubborn agents (p=1) never change their label: within the type S = 1 and every stubborn agent
    keeps its own silo (GMM agent i starts on component i), so its final silos equal its agents."""
    import numpy as np

    from tensorsim.analysis import report
    from tensorsim.analysis.types import type_run_values

    d = _run(tmp_path, "typed", "trial.n=10", "trial.steps=6", "trial.k=3", "trial.p=0.2", "trial.replicas=2",
             "trial.types=[{share:0.3,p:1.0,name:stubborn},{share:0.7,name:rest}]", f"output.format={fmt}")
    assert report.main([str(d), "--window", "3"]) == 0
    rows = {r["type"]: r for r in _rows(d / "types.csv")}
    assert set(rows) == {"stubborn", "rest"}
    st = rows["stubborn"]
    assert (st["runs"], st["agents"], st["final_silos"], st["mean_stability_window"]) == ("2", "3", "3", "1")
    assert rows["rest"]["agents"] == "7"
    assert "## By agent type" in (d / "phase.md").read_text()
    # the per-run values on a hand-made run: 4 agents, types a a b b, 3 steps
    lab = np.array([[0, 1, 2, 3], [0, 0, 2, 3], [0, 0, 2, 2]])
    v = type_run_values(lab, np.array([True, True, False, False]), window=2)
    assert v == {"agents": 2, "final_silos": 1, "final_entropy": 0.0, "mean_stability_window": 0.75,
                 "share_in_largest_silo": 1.0}
    w = type_run_values(lab, np.array([False, False, True, True]), window=2)
    assert w["final_silos"] == 1 and w["share_in_largest_silo"] == 0.0 and w["mean_stability_window"] == 0.75


def test_report_writes_no_type_split_without_types(tmp_path):
    from tensorsim.analysis import report

    d = _run(tmp_path, "plain", "trial.steps=4")
    assert report.main([str(d), "--window", "2"]) == 0
    assert not (d / "types.csv").exists() and "By agent type" not in (d / "phase.md").read_text()


def test_a_noisy_typed_gmm_run_resumes_from_its_state_exactly():
    """Noise and types keep no state of their own (counter-based draws, types from the seed): a run
    continued from a state_dict goes on as the uninterrupted one."""
    over = ("trial.n=8", "trial.steps=6", "trial.noise=0.5", "trial.noise_mode=kb",
            "trial.types=[{share:0.25,p:1.0},{share:0.75}]", "trial.k={linear:[5,1]}")
    whole = _gmm(*over)
    recs = [whole.step(t) for t in range(6)]
    first = _gmm(*over)
    for t in range(3):
        first.step(t)
    resumed = _gmm(*over)
    resumed.load_state_dict(first.state_dict())
    for t in range(3, 6):
        rec = resumed.step(t)
        assert torch.equal(rec.labels, recs[t].labels) and torch.equal(rec.garbled, recs[t].garbled)
    assert torch.equal(resumed.w, whole.w) and torch.equal(resumed.rag, whole.rag)


def test_llm_run_with_types_and_drop_noise_writes_frozen_contexts(tiny_models, tmp_path):
    """End to end on LLM agents: a garbled (drop) agent answers at t+1 from the context it had at t; the
    transcript, agents.csv and metrics.csv agree."""
    import json

    import tiny_models as tm

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "trial=smoke", *tm.overrides(tiny_models), "output.plots=false", "trial.noise=0.5",
            "trial.types=[{share:0.5,p:1.0,name:stubborn},{share:0.5,p:0.0,name:open}]"])
    run.simulate(cfg, tmp_path / "run", hydra_subdir=None)
    agents = {(r["t"], r["agent"]): r for r in _rows(tmp_path / "run" / "agents.csv")}
    lines = [json.loads(x) for x in (tmp_path / "run" / "transcript.jsonl").read_text().splitlines()]
    context = {(str(x["t"]), str(x["agent"])): x["context"] for x in lines}
    response = {(str(x["t"]), str(x["agent"])): x["response"] for x in lines}
    garbled = [(t, a) for (t, a), r in agents.items() if r["garbled"] == "1" and t != "2"]
    assert garbled  # noise 0.5 over 12 messages
    for t, a in garbled:
        assert context[(str(int(t) + 1), a)] == context[(t, a)]
    for (t, a), r in agents.items():
        if r["garbled"] == "0" and t != "2":  # an intact message: the answer taken in is the next context
            assert context[(str(int(t) + 1), a)] == response[(t, r["partner"])]
        assert r["mirrored"] == ("1" if r["type"] == "stubborn" else "0")
    assert {r["p_t"] for r in _rows(tmp_path / "run" / "metrics.csv")} == {"0.5"}
