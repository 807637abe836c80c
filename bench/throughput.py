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
from common import Timer, build_llm_engine, config, device_name, emit, measure_steps  # noqa: E402
from sequential_reference import SequentialSimulation  # noqa: E402


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
    engine, model, tok, embedder = build_llm_engine(cfg)
    rows = {"batched": measure_steps(engine, args.steps)}
    if not args.skip_sequential:
        seq = SequentialSimulation(cfg, engine.kb, model, tok, embedder, engine.prompts, engine.generator.stop_ids)
        seq.step()  # warm-up
        tokens0 = seq.new_tokens
        with Timer() as tm:
            for _ in range(args.steps):
                seq.step()
        rows["sequential"] = {"seconds": round(tm.seconds, 3), "new_tokens": seq.new_tokens - tokens0,
                              "agent_steps_per_s": round(args.n * args.steps / tm.seconds, 3),
                              "new_tokens_per_s": round((seq.new_tokens - tokens0) / tm.seconds, 2)}
    print(f"{'path':<12}{'agent-steps/s':>15}{'new tok/s':>12}{'seconds':>10}")
    for name, r in rows.items():
        print(f"{name:<12}{r['agent_steps_per_s']:>15.2f}{r['new_tokens_per_s']:>12.1f}{r['seconds']:>10.1f}")
    result = dict(rows)
    if "sequential" in rows:
        result["speedup"] = round(rows["batched"]["agent_steps_per_s"] / rows["sequential"]["agent_steps_per_s"], 2)
    result.update(device=device_name(), n=args.n, populations=engine.B, measured_steps=args.steps,
                  model=cfg.model.name, torch=torch.__version__)
    emit(result)


if __name__ == "__main__":
    main()
