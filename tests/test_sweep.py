"""Hydra sweeps: `python -m tensorsim -m ...` through the basic launcher and hydra-submitit-launcher."""
import csv
import json

import pytest
from conftest import ROOT, run_cli

from tensorsim.outputs import is_complete

CHEAP = ["agents=gmm", "trial=smoke"]  # the cheapest complete run: no model to load


def check_jobs(sweep, ks):
    for num, k in enumerate(ks):
        job = sweep / str(num)
        assert is_complete(job), f"job {num} incomplete: {sorted(p.name for p in job.iterdir())}"
        summary = json.loads((job / "summary.json").read_text())
        assert summary["k"] == k and summary["config"]["trial"]["k"] == k
        assert f"trial.k={k}" in (job / ".hydra" / "overrides.yaml").read_text()
        with open(job / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == summary["steps"]
        assert not list(job.glob("*.partial"))


def report_rows(sweep):
    r = run_cli(sweep, module="tensorsim.report", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(sweep / "phase.csv", newline="") as f:
        return [(row["k"], row["runs"]) for row in csv.DictReader(f)]


def test_submitit_local_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    sweep = tmp_path / "multirun"
    r = run_cli("-m", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.timeout_min=10",
                *CHEAP, "trial.k=1,2", f"hydra.sweep.dir={sweep}", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Submitit 'local' sweep output dir" in r.stdout + r.stderr
    assert (sweep / ".submitit").is_dir()  # the jobs ran through submitit
    check_jobs(sweep, [1, 2])
    assert report_rows(sweep) == [("1", "1"), ("2", "1")]


def test_local_launcher_sets_threads_from_cpus_per_task(tmp_path):
    """threads=null under hydra/launcher=local: each job runs cpus_per_task torch threads, not one per core
    of the machine; an explicit threads wins; the basic launcher leaves torch's default (null)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    threads = {}
    for name, extra in [("auto", ["hydra/launcher=local", "hydra.launcher.cpus_per_task=3"]),
                        ("explicit", ["hydra/launcher=local", "threads=1"]), ("basic", [])]:
        sweep = tmp_path / name
        r = run_cli("-m", *extra, "hydra.launcher.gpus_per_node=0" if extra else "seed=0", *CHEAP, "trial.k=1",
                    f"hydra.sweep.dir={sweep}", timeout=300)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        threads[name] = json.loads((sweep / "0" / "summary.json").read_text())["config"]["threads"]
    assert threads == {"auto": 3, "explicit": 1, "basic": None}


def test_basic_launcher_sweep(tmp_path):
    sweep = tmp_path / "multirun"
    r = run_cli("-m", *CHEAP, "trial.k=1,3", "trial.p=0.2", f"hydra.sweep.dir={sweep}", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    check_jobs(sweep, [1, 3])


@pytest.mark.parametrize("launcher,target", [("local", "LocalLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_configs_compose(launcher, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.mem_gb=8"],
                      return_hydra_config=True)
    lc = cfg.hydra.launcher
    assert lc._target_.endswith(target)
    assert lc.mem_gb == 8 and lc.gpus_per_node >= 0 and lc.cpus_per_task >= 1 and lc.timeout_min > 0
    if launcher == "slurm":
        assert "partition" in lc and "array_parallelism" in lc
        # README "Runs that survive": a time-limit signal with a lead time, and requeues after time limits
        assert lc.signal_delay_s >= 60 and lc.max_num_timeout > 0
