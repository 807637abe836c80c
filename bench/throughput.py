"""Throughput of the tensorsim engine against the authors' sequential loop, same workload.

Both use the embedded model, n=30 (default), one warm-up step, then --steps measured steps.
Prints a table, then as its LAST line one JSON object:
  {"sequential": {"agent_steps_per_s", "new_tokens_per_s"}, "batched": {...}, "speedup", "device"}
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, config, device_name, emit  # noqa: E402
from sequential_reference import SequentialSimulation  # noqa: E402

from tensorsim.knowledge import load_kb  # noqa: E402
from tensorsim.llm_agents import LLMAgents  # noqa: E402
from tensorsim.models import Embedder, load_llm, resolve_device, resolve_dtype  # noqa: E402
from tensorsim.populations import build_populations  # noqa: E402


def measure(step, steps: int, tokens) -> dict:
    step(0)  # warm-up
    t0 = tokens()
    with Timer() as tm:
        for t in range(1, steps + 1):
            step(t)
    return {"seconds": tm.seconds, "new_tokens": tokens() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=1, help="populations packed into the batched engine")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("overrides", nargs="*", help="hydra overrides, e.g. generation.max_new_tokens=60")
    args = ap.parse_args(argv)
    cfg = config(f"trial.n={args.n}", f"trial.k={args.k}", f"trial.replicas={args.replicas}", *args.overrides)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tok = load_llm(cfg.model, device, dtype)
    embedder = Embedder(cfg.embedder, device)
    kb = load_kb(cfg.kb).take(args.n)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed).to(device)
    engine = LLMAgents(cfg, kb, pops, model, tok, embedder, device)
    rows = {}
    b = measure(engine.step, args.steps, lambda: engine.generator.stats.new_tokens)
    rows["batched"] = {"agent_steps_per_s": pops.B * args.n * args.steps / b["seconds"],
                       "new_tokens_per_s": b["new_tokens"] / b["seconds"], "seconds": b["seconds"]}
    if not args.skip_sequential:
        seq = SequentialSimulation(cfg, kb, model, tok, embedder, engine.prompts, engine.generator.stop_ids)
        s = measure(lambda t: seq.step(), args.steps, lambda: seq.new_tokens)
        rows["sequential"] = {"agent_steps_per_s": args.n * args.steps / s["seconds"],
                              "new_tokens_per_s": s["new_tokens"] / s["seconds"], "seconds": s["seconds"]}
    print(f"{'path':<12}{'agent-steps/s':>15}{'new tok/s':>12}{'seconds':>10}")
    for name, r in rows.items():
        print(f"{name:<12}{r['agent_steps_per_s']:>15.2f}{r['new_tokens_per_s']:>12.1f}{r['seconds']:>10.1f}")
    result = {k: {m: round(v[m], 3) for m in ("agent_steps_per_s", "new_tokens_per_s")} for k, v in rows.items()}
    if "sequential" in rows:
        result["speedup"] = round(rows["batched"]["agent_steps_per_s"] / rows["sequential"]["agent_steps_per_s"], 2)
    result.update(device=device_name(), n=args.n, populations=pops.B, measured_steps=args.steps,
                  model=cfg.model.name, torch=torch.__version__)
    emit(result)


if __name__ == "__main__":
    main()
