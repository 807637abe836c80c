"""Throughput of the tensorsim engine against the authors' sequential loop, same workload.

Both use the embedded model, n=30 (default), one warm-up step, then --steps measured steps; the engine
is also measured with the other generation engine(s) (--also-engines, default hf). Prints a table, then
as its LAST line one JSON object:
  {"sequential": {"agent_steps_per_s", "new_tokens_per_s"}, "batched": {...}, "batched_hf": {...},
   "speedup", "batched_vs_hf", "machine", "ceiling", "device"}
Next to the rates it puts what bounds them, measured in the same process (common.machine_peaks): the
useful GFLOP/s each path reached against a large matmul's rate, the weight bytes/s the sequential
path streamed against the read bandwidth, and the agent-steps/s the batched work would reach if all
of it ran at the matmul rate (a ceiling no batching can pass on this machine).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Timer, build_llm_engine, config, device_name, emit, linear_weights, machine_peaks,  # noqa: E402
                    measure_steps, useful_gflop)
from sequential_reference import SequentialSimulation  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=1, help="populations packed into the batched engine")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("--also-engines", nargs="*", default=["hf"], choices=["fast", "hf"],
                    help="also measure the batched engine with these generation.engine values")
    ap.add_argument("--also-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="also measure the batched engine with each of these overrides, e.g. "
                         "generation.continuous=false (one row each)")
    ap.add_argument("overrides", nargs="*", help="hydra overrides, e.g. generation.max_new_tokens=60")
    args = ap.parse_args(argv)
    base = (f"trial.n={args.n}", f"trial.k={args.k}", f"trial.replicas={args.replicas}", *args.overrides)
    cfg = config(*base)
    engine, model, tok, embedder = build_llm_engine(cfg)
    rows = {"batched": measure_steps(engine, args.steps)}
    for other in args.also_engines:  # the same workload on another generation engine, same process
        alt, *_ = build_llm_engine(config(*base, f"generation.engine={other}"), model, tok, embedder)
        rows[f"batched_{other}"] = measure_steps(alt, args.steps)
    for override in args.also_overrides:
        alt, *_ = build_llm_engine(config(*base, override), model, tok, embedder)
        rows[f"batched[{override}]"] = measure_steps(alt, args.steps)
    if not args.skip_sequential:
        seq = SequentialSimulation(cfg, engine.kb, model, tok, embedder, engine.prompts, engine.generator.stop_ids)
        seq.step()  # warm-up
        tokens0, prompt0, calls0 = seq.new_tokens, seq.prompt_tokens, seq.calls
        with Timer() as tm:
            for _ in range(args.steps):
                seq.step()
        tokens, calls = seq.new_tokens - tokens0, seq.calls - calls0
        decode_rows = tokens - calls  # each call's first token comes out of its prefill
        gflop = useful_gflop(model, seq.prompt_tokens - prompt0, calls, decode_rows)
        # batch 1 reads every weight once per forward: prefill and decode forwards alike
        weight_bytes = sum(linear_weights(model)) * next(model.parameters()).element_size()
        rows["sequential"] = {"seconds": round(tm.seconds, 3), "new_tokens": tokens,
                              "agent_steps_per_s": round(args.n * args.steps / tm.seconds, 3),
                              "new_tokens_per_s": round(tokens / tm.seconds, 2),
                              "prefill_tokens": seq.prompt_tokens - prompt0, "decode_rows": decode_rows,
                              "GFLOP": round(gflop, 1), "GFLOP_per_s": round(gflop / tm.seconds, 1),
                              "weight_GB_per_s": round(weight_bytes * (calls + decode_rows) / tm.seconds / 1e9, 1)}
    peaks = machine_peaks(next(model.parameters()).device, next(model.parameters()).dtype)
    width = max(14, *(len(name) + 2 for name in rows))
    print(f"{'path':<{width}}{'agent-steps/s':>15}{'new tok/s':>12}{'seconds':>10}{'GFLOP/s':>10}")
    for name, r in rows.items():
        print(f"{name:<{width}}{r['agent_steps_per_s']:>15.2f}{r['new_tokens_per_s']:>12.1f}{r['seconds']:>10.1f}"
              f"{r['GFLOP_per_s']:>10.1f}")
    # if every useful FLOP of the batched steps ran at the large-matmul rate
    gflop_per_agent_step = rows["batched"]["GFLOP"] / (engine.B * args.n * args.steps)
    ceiling = {"gflop_per_agent_step": round(gflop_per_agent_step, 2),
               "agent_steps_per_s": round(peaks["matmul_GFLOP_per_s"] / gflop_per_agent_step, 2),
               "batched_share_of_peak": round(rows["batched"]["GFLOP_per_s"] / peaks["matmul_GFLOP_per_s"], 3)}
    if "sequential" in rows:
        ceiling["speedup"] = round(ceiling["agent_steps_per_s"] / rows["sequential"]["agent_steps_per_s"], 2)
        ceiling["sequential_share_of_read_bandwidth"] = round(
            rows["sequential"]["weight_GB_per_s"] / peaks["read_GB_per_s"], 3)
    print(f"machine: {peaks['matmul_GFLOP_per_s']} GFLOP/s matmul ({peaks['dtype']}), {peaks['read_GB_per_s']} GB/s "
          f"read; batched work needs {ceiling['gflop_per_agent_step']} GFLOP per agent-step, so at most "
          f"{ceiling['agent_steps_per_s']} agent-steps/s here"
          + (f" ({ceiling['speedup']}x the sequential reference)" if "speedup" in ceiling else ""))
    result = dict(rows)
    if "sequential" in rows:
        result["speedup"] = round(rows["batched"]["agent_steps_per_s"] / rows["sequential"]["agent_steps_per_s"], 2)
    for other in args.also_engines:
        result[f"batched_vs_{other}"] = round(rows["batched"]["agent_steps_per_s"]
                                           / rows[f"batched_{other}"]["agent_steps_per_s"], 2)
    for override in args.also_overrides:
        result[f"batched_vs[{override}]"] = round(rows["batched"]["agent_steps_per_s"]
                                                / rows[f"batched[{override}]"]["agent_steps_per_s"], 2)
    result.update(machine=peaks, ceiling=ceiling)
    result.update(engine=engine.generator.cfg.engine, device=device_name(), n=args.n, populations=engine.B,
                  measured_steps=args.steps, model=cfg.model.name, torch=torch.__version__)
    emit(result, next(model.parameters()).dtype)


if __name__ == "__main__":
    main()
