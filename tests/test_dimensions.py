"""Experiment dimensions beyond the paper (README "Asking your own question"): schedules of k and p,
mixed populations (agent types, Beta-distributed p), miscommunication noise, and their one-line errors.
GMM agents wherever the behaviour does not depend on the agent kind (no model loads); the tiny random
LLaMA of tests/tiny_models.py for what LLM agents do with noise and types."""
import csv
import math

import pytest
import torch
from conftest import ROOT, run_cli
from hydra import compose, initialize_config_dir

from tensorsim import run
from tensorsim.config import validate
from tensorsim.core import interact, rng, schedules
from tensorsim.core.populations import (assign_types, beta_draws, build_populations, trial_populations,
                                        type_counts)
from tensorsim.errors import UserError

TABLES = ("metrics.csv", "agents.csv")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["agents=gmm", "trial=smoke", "output.plots=false",
                                                        *overrides])


def _run(tmp_path, name, *overrides):
    """A GMM run in-process -> its directory."""
    d = tmp_path / name
    run.simulate(_cfg(*overrides), d, hydra_subdir=None)
    return d


def _bytes(d, sub=""):
    return {t: (d / sub / t).read_bytes() for t in TABLES}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _drop(path, columns):
    """A table's rows as lists without `columns` (what a grid cell adds to the same run alone)."""
    rows = _rows(path)
    return [[v for key, v in r.items() if key not in columns] for r in rows]


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
