"""agents=lora through the CLI: every output, bad values, kill -9 and resume, export to peft."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cli

from tensorsim import checkpoint

OUTPUTS = ["metrics.csv", "agents.csv", "transcript.jsonl", "stability.png", "entropy.png", "silos.png",
           "summary.json", "adapters.safetensors", "drift.csv"]


def test_smoke_trial_with_lora_agents_writes_every_output(tiny_models, tmp_path):
    """trial=smoke, agents=lora on the tiny models (the embedded SmolLM2 with adapters runs in bench/lora.py
    and in `python -m tensorsim agents=lora`; here the plumbing, 40 s cheaper)."""
    from tiny_models import overrides

    r = run_cli("trial=smoke", "agents=lora", *overrides(tiny_models), f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    for f in OUTPUTS:
        assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["models"]["agents"] == "lora" and s["complete"]
    lora = s["lora"]
    assert lora["rank"] == 8 and lora["target_modules"] == ["q_proj", "v_proj"]
    steps = s["steps"]
    for column in ("loss", "update_norm", "adapter_distance", "answer_distance"):
        assert len(lora["mean_per_step"][column]) == steps
    assert all(x > 0 for x in lora["mean_per_step"]["update_norm"])  # every step trained
    assert all(0 <= x <= 2 for x in lora["mean_per_step"]["adapter_distance"])
    rows = (tmp_path / "drift.csv").read_text().splitlines()
    assert len(rows) == 1 + steps * s["n"]


@pytest.mark.parametrize("overrides, fragment", [
    (["agents.rank=0"], "agents.rank=0 is not allowed"),
    (["agents.lr=0"], "agents.lr=0 is not allowed"),
    (["agents.lr=-1e-3"], "agents.lr=-0.001 is not allowed"),
    (["agents.target_modules=[q_proj,attn]"], "agents.target_modules='attn' is not allowed: one of q_proj"),
    (["agents.train_steps=-1"], "agents.train_steps=-1 is not allowed"),
    (["agents.context=maybe"], "agents.context='maybe' is not allowed"),
])
def test_bad_lora_values_are_one_line_and_exit_2(tmp_path, overrides, fragment):
    r = run_cli("trial=smoke", "agents=lora", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr


def tiny_run(tiny_models, *extra):
    from tiny_models import overrides

    return ["trial=smoke", "agents=lora", "dtype=float32", "agents.lr=0.01", "trial.steps=8", "trial.window=3",
            "checkpoint.every=2", *overrides(tiny_models), *extra]


def test_kill_9_then_resume_is_byte_identical(tiny_models, tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    args = tiny_run(tiny_models, "agents.context=true")
    r = run_cli(*args, f"hydra.run.dir={whole}")
    assert r.returncode == 0, r.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "tensorsim", *args, f"hydra.run.dir={crashed}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (crashed / checkpoint.CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (crashed / "summary.json").exists()
    state = checkpoint.loads((crashed / checkpoint.CHECKPOINT).read_bytes())["agents"]  # no pickle
    assert state["adam"]["steps"] >= 2 and set(state["adapters"]) == set(state["adam"]["m"])
    r = run_cli("resume=true", f"hydra.run.dir={crashed}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout
    for f in OUTPUTS[:3] + ["adapters.safetensors", "drift.csv"]:
        assert (crashed / f).read_bytes() == (whole / f).read_bytes(), f


@pytest.fixture(scope="module")
def tiny_lora_grid(tiny_models, tmp_path_factory):
    """A packed grid (2 cells x 2 replicas) of tiny agents=lora runs, 3 steps."""
    run = tmp_path_factory.mktemp("lora_grid")
    r = run_cli(*tiny_run(tiny_models, "trial.steps=3", "trial.window=2", "trial.p=[0.2,0.8]", "trial.replicas=2"),
                f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    return run


def test_report_adds_the_weight_drift_of_each_cell(tiny_lora_grid, tmp_path):
    import csv

    rows = list(csv.DictReader(open(tiny_lora_grid / "drift.csv")))
    assert len(rows) == 4 * 3 * 6  # populations x steps x agents
    assert {(r["p"], r["replica"]) for r in rows} == {("0.2", "0"), ("0.2", "1"), ("0.8", "0"), ("0.8", "1")}
    r = run_cli(tiny_lora_grid, "--out", tmp_path / "rep", module="tensorsim.report")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "drift.png").stat().st_size > 0
    md = (tmp_path / "rep" / "phase.md").read_text()
    assert "## Weight drift (agents=lora)" in md
    table = [line for line in md.splitlines() if line.startswith("| 2 | 0.")]
    assert len(table) == 4  # the phase table's and the drift table's row of each cell
    p02 = [float(r["update_norm"]) for r in rows if r["p"] == "0.2" and r["t"] == "2"]
    assert f"| 2 | 0.2 | 2 | {sum(p02) / len(p02):.4g} |" in md


def test_export_cli_writes_an_adapter_peft_loads_with_the_same_logits(tiny_models, tiny_lora_grid, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tensorsim.export_adapters import stacked_adapters
    from tensorsim.lm.lora import StackedLoRA

    run = tiny_lora_grid
    r = run_cli(run, "--agent", 4, "--population", 3, "--out", tmp_path / "a4", module="tensorsim.export_adapters")
    assert r.returncode == 0, r.stderr
    bad = run_cli(run, "--agent", 6, "--out", tmp_path / "x", module="tensorsim.export_adapters")
    assert bad.returncode == 2 and "--agent=6 is not allowed: an agent index in 0..5" in bad.stderr
    bad = run_cli(run, "--agent", 0, "--population", 4, "--out", tmp_path / "x", module="tensorsim.export_adapters")
    assert bad.returncode == 2 and "--population=4 is not allowed: a population index in 0..3" in bad.stderr

    def base():
        return AutoModelForCausalLM.from_pretrained(tiny_models[0], dtype=torch.float32).eval()

    params, meta = stacked_adapters(run)
    model = base()
    lora = StackedLoRA(model.config, 24, meta["rank"], meta["alpha"], meta["target_modules"], torch.device("cpu"))
    lora.load_state_dict(params)
    assert any(p.abs().sum() > 0 for k, p in params.items() if k.endswith(".B"))  # trained: B moved off zero
    lora.install(model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad(), lora.rows_of(torch.tensor([3 * 6 + 4])):
        ours = model(input_ids=ids).logits
    pm = PeftModel.from_pretrained(base(), tmp_path / "a4")
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(base()(input_ids=ids).logits, ours)


def test_hf_engine_runs_lora_agents_and_a_budget_too_small_for_the_adapters_is_refused(tiny_models, tmp_path):
    r = run_cli(*tiny_run(tiny_models, "trial.steps=2", "trial.window=2", "generation.engine=hf",
                          "generation.memory_budget_gb=0.05"), f"hydra.run.dir={tmp_path / 'hf'}")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "hf" / "summary.json").read_text())
    assert all(x > 0 for x in s["lora"]["mean_per_step"]["update_norm"])
    r = run_cli(*tiny_run(tiny_models, "generation.memory_budget_gb=1e-6"), f"hydra.run.dir={tmp_path / 'small'}")
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]  # after the loading bars
    assert errors == [r.stderr.strip().splitlines()[-1]], r.stderr
    assert "generation.memory_budget_gb=1e-06 is not allowed: the 6 adapters with their gradients and Adam " \
           "moments alone take 0.33 MiB" in errors[0], r.stderr


def test_a_lora_grid_over_noise_and_graphs_keeps_each_cells_drift_apart(tiny_models, tmp_path):
    """drift.csv has a column per swept key, and the report pools a cell's rows by all of them."""
    import csv

    from hydra import compose, initialize_config_dir

    from tensorsim import run as runner
    from tensorsim.analysis.report import report

    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):  # in-process: 8 s less
        cfg = compose(config_name="config", overrides=tiny_run(tiny_models, "trial.steps=2", "trial.window=1",
                                                               "trial.noise=[0,1]", "trial.graph=[knn,complete]"))
    runner.simulate(cfg, run, hydra_subdir=None)
    rows = list(csv.DictReader(open(run / "drift.csv")))
    assert list(rows[0])[:6] == ["population", "k", "p", "noise", "graph", "replica"]
    assert {(x["noise"], x["graph"]) for x in rows} == {("0.0", "knn"), ("0.0", "complete"), ("1.0", "knn"),
                                                        ("1.0", "complete")}
    report(run, tmp_path / "rep", window=1)
    md = (tmp_path / "rep" / "phase.md").read_text()
    drift = md.split("## Weight drift (agents=lora)")[1]
    for noise in ("0", "1"):
        for graph in ("knn", "complete"):
            want = [float(x["update_norm"]) for x in rows
                    if float(x["noise"]) == float(noise) and x["graph"] == graph and x["t"] == "1"]
            assert len(want) == 6
            line = [ln for ln in drift.splitlines() if ln.startswith(f"| 2 | 0.5 | {noise} | {graph} |")]
            assert len(line) == 1 and f"| {sum(want) / len(want):.4g} |" in line[0], (noise, graph, drift)
