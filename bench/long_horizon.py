"""Long horizons (issue 16): peak memory and disk of long runs, and the LLM agents' text table with and
without compaction.

    OMP_NUM_THREADS=1 python bench/long_horizon.py [--quick] [--out bench/results/long_horizon_cpu-2core.json]

Each run is `python -m tensorsim` in a child process: its peak RSS comes from os.wait4, its outputs' size
from the finished run directory, and its checkpoints (removed when a run completes) are watched while it
runs: size, step t and the text table's length of every one written. The ablation steps two LLM agent
sets side by side in this process, one with compaction switched off, and records the table's length and
the checkpointed state's size after every step.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # this tree's tensorsim (the ablation runs in-process)
from common import config, host  # noqa: E402

from tensorsim import checkpoint  # noqa: E402

RUNS = {  # name -> overrides (run with checkpoint.every set so that checkpoints can be measured)
    "gmm_paper_T1000": ["agents=gmm", "trial=paper", "trial.steps=1000", "checkpoint.every=100"],
    "gmm_n10000_T1000": ["agents=gmm", "trial=paper", "trial.n=10000", "trial.k=10", "trial.steps=1000",
                         "agents.components=30", "checkpoint.every=100"],
    # where the n=10,000 run's memory goes: without plots, and without the agents table too
    "gmm_n10000_T1000_no_plots": ["agents=gmm", "trial=paper", "trial.n=10000", "trial.k=10", "trial.steps=1000",
                                  "agents.components=30", "checkpoint.every=100", "output.plots=false"],
    "gmm_n10000_T1000_no_tables": ["agents=gmm", "trial=paper", "trial.n=10000", "trial.k=10", "trial.steps=1000",
                                   "agents.components=30", "checkpoint.every=100", "output.plots=false",
                                   "output.agents=false"],
    "llm_n8_T300": ["trial=smoke", "trial.n=8", "trial.steps=300", "trial.window=20", "checkpoint.every=25"],
}
QUICK = {"gmm_paper_T1000": ["trial.steps=50", "checkpoint.every=10"],
         "gmm_n10000_T1000": ["trial.steps=20", "checkpoint.every=10"],
         "gmm_n10000_T1000_no_plots": ["trial.steps=20", "checkpoint.every=10"],
         "gmm_n10000_T1000_no_tables": ["trial.steps=20", "checkpoint.every=10"],
         "llm_n8_T300": ["trial.steps=12", "trial.window=3", "checkpoint.every=4"]}


def dir_bytes(path: Path) -> dict[str, int]:
    """Every file under path (Hydra's .hydra/ left out) -> its size."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts}


def watch_checkpoints(run_dir: Path, seen: list, done: threading.Event) -> None:
    """Record (t, bytes, text table length) of every checkpoint the run writes, until done is set."""
    path, last = run_dir / checkpoint.CHECKPOINT, None
    while not done.is_set():
        try:
            stamp = path.stat().st_mtime_ns
            if stamp != last:
                data = path.read_bytes()
                state = checkpoint.loads(data)
                texts = state["agents"].get("texts")
                seen.append({"t": state["t"], "bytes": len(data), "texts": None if texts is None else len(texts)})
                last = stamp
        except (OSError, ValueError):  # not there yet, or replaced while read: the next poll sees it
            pass
        time.sleep(0.2)


def run(name: str, overrides: list[str], tmp: Path, limit_s: float | None = None) -> dict:
    """One CLI run; past limit_s it gets SIGTERM (it checkpoints the step it is in and stops: exit 5)."""
    run_dir = tmp / name
    env = dict(os.environ, TQDM_DISABLE="1")
    start = time.perf_counter()
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tensorsim", *overrides, f"hydra.run.dir={run_dir}"],
                                cwd=ROOT, env=env, stdout=out, stderr=err)
    seen, done = [], threading.Event()
    watcher = threading.Thread(target=watch_checkpoints, args=(run_dir, seen, done), daemon=True)
    watcher.start()
    timer = threading.Timer(limit_s, proc.send_signal, (signal.SIGTERM,)) if limit_s else None
    if timer:
        timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if timer:
        timer.cancel()
    time.sleep(0.5)  # the watcher reads a checkpoint written at the stop
    done.set()
    watcher.join()
    stdout, stderr = (tmp / f"{name}.out").read_text(), (tmp / f"{name}.err").read_text()
    stopped = proc.returncode == 5
    if proc.returncode and not stopped:
        sys.exit(f"{name} failed: {stderr.strip().splitlines()[-3:]}")
    files = dir_bytes(run_dir)
    estimate = [x for x in stdout.splitlines() if x.startswith("[tensorsim] expected output size")]
    return {"overrides": overrides, "stopped_at_limit": stopped, "wall_s": round(wall, 1),
            "peak_rss_mb": peak_rss_mb(usage),
            "outputs_bytes": sum(files.values()), "files": files, "checkpoints": seen,
            "estimate_line": estimate[0] if estimate else None}


def peak_rss_mb(usage) -> float:
    return round(usage.ru_maxrss / 1024, 1)  # Linux: kB


def ablation(steps: int) -> dict:
    """LLM agents (trial=smoke, n=8) stepped with and without compaction: per step the text table's length
    and the bytes of the checkpointed agent state."""
    from tensorsim.agents.llm import build
    from tensorsim.core.populations import trial_populations

    cfg = config("trial=smoke", "trial.n=8")
    cpu = torch.device("cpu")
    pops = trial_populations(cfg.trial, cfg.seed)
    compacted, _, _ = build(cfg, pops, cpu, torch.float32)
    whole, _, _ = build(cfg, pops, cpu, torch.float32)
    whole._compact_texts = lambda: None
    rows = []
    for t in range(steps):
        a, b = compacted.step(t), whole.step(t)
        assert a.contexts == b.contexts and a.responses == b.responses, t
        rows.append({"t": t + 1, "texts": len(compacted.texts), "texts_without": len(whole.texts),
                     "state_bytes": len(checkpoint.dumps(compacted.state_dict())),
                     "state_bytes_without": len(checkpoint.dumps(whole.state_dict()))})
    return {"trial": "smoke, n=8, m=5, B=1, float32", "steps": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "long_horizon_cpu-2core.json")
    ap.add_argument("--quick", action="store_true", help="a few steps of each run (checks the script)")
    ap.add_argument("--only", nargs="*", help="run only these of " + ", ".join(RUNS))
    ap.add_argument("--ablation-steps", type=int, default=24)
    ap.add_argument("--llm-limit-s", type=float, default=600, help="stop the LLM run (SIGTERM) after this long")
    ap.add_argument("--keep-runs", action="store_true", help="keep the runs already in --out that this call skips")
    args = ap.parse_args()
    kept = json.loads(args.out.read_text())["runs"] if args.keep_runs and args.out.is_file() else {}
    result = {"runs": kept, "host": host(torch.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in RUNS.items():
            if args.only is not None and name not in args.only:
                continue
            limit = args.llm_limit_s if name.startswith("llm") else None
            result["runs"][name] = run(name, overrides + (QUICK[name] if args.quick else []), Path(tmp), limit)
            print(json.dumps({name: {k: v for k, v in result["runs"][name].items() if k != "files"}}), flush=True)
    result["ablation"] = ablation(4 if args.quick else args.ablation_steps)
    text = json.dumps(result, indent=1) + "\n"
    print(text)
    if not args.quick:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
