"""Engine throughput vs population size n and vs packed populations (embedded model).

For each n in --ns (one population) and each count in --packs (populations of n=30 packed in one
batch): one warm-up step, --steps timed steps. Prints a table, writes a PNG, and as its LAST line one
JSON object {"by_n": [...], "by_packed": [...], "device": ...}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_llm_engine, config, device_name, emit, measure_steps  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="*", default=[30, 100, 300])
    ap.add_argument("--packs", type=int, nargs="*", default=[1, 4, 16, 64])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--png", default="bench/out/scaling.png")
    ap.add_argument("overrides", nargs="*", help="hydra overrides")
    args = ap.parse_args(argv)
    loaded = (None, None, None)
    by_n, by_packed = [], []
    for n in args.ns:
        cfg = config(f"trial.n={n}", "trial.k=5", *args.overrides)
        engine, *loaded = build_llm_engine(cfg, *loaded)
        by_n.append(dict(n=n, populations=1, **measure_steps(engine, args.steps)))
        print(by_n[-1], flush=True)
    for packs in args.packs:
        cfg = config("trial.n=30", "trial.k=5", f"trial.replicas={packs}", *args.overrides)
        engine, *loaded = build_llm_engine(cfg, *loaded)
        by_packed.append(dict(n=30, populations=packs, **measure_steps(engine, args.steps)))
        print(by_packed[-1], flush=True)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, rows, key, label in ((axes[0], by_n, "n", "agents n (one population)"),
                                 (axes[1], by_packed, "populations", "packed populations of n=30")):
        ax.plot([r[key] for r in rows], [r["agent_steps_per_s"] for r in rows], "o-", label="agent-steps/s")
        ax.plot([r[key] for r in rows], [r["new_tokens_per_s"] for r in rows], "s--", label="new tokens/s")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.legend()
    fig.suptitle(f"tensorsim throughput on {device_name()}")
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"{'kind':<10}{'n':>6}{'pops':>6}{'agent-steps/s':>15}{'tok/s':>10}")
    for r in by_n + by_packed:
        print(f"{'n' if r in by_n else 'packed':<10}{r['n']:>6}{r['populations']:>6}"
              f"{r['agent_steps_per_s']:>15.2f}{r['new_tokens_per_s']:>10.1f}")
    emit({"by_n": by_n, "by_packed": by_packed, "device": device_name(), "png": args.png},
         next(loaded[0].parameters()).dtype)


if __name__ == "__main__":
    main()
