"""Throughput of the Gaussian-mixture proxy (docs/SPEC.md §2): agent-steps per second of tensorsim.agents.gmm

  * against n (one population of n = 1e3, 1e4, 1e5 agents, C = 30 components, exact neighbours), and
  * against the number of packed replicas of the paper's n = 30 population (1, 10, 100, 1000),

each compared with a straightforward per-agent numpy implementation of docs/SPEC.md §2 (one population of 30,
a Python loop over agents, numpy inside one agent). Prints a table, writes a PNG, and prints as its
last line one JSON object with every number.

    python bench/proxy_scaling.py [--out bench/out/proxy_scaling.png] [--steps 3] [--threads N]
                                  [--sizes 1000,10000,100000] [--replicas 1,10,100,1000] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

from tensorsim.agents.gmm import GMMAgents  # noqa: E402
from tensorsim.core.populations import build_populations  # noqa: E402


# --------------------------------------------------------------------------- per-agent numpy baseline
class NumpyGMM:
    """docs/SPEC.md §2 agent by agent: what a direct transcription of the paper's loop looks like."""

    def __init__(self, n, k, p, C=None, m=5, sigma=0.2, eps=1e-12, seed=0):
        self.n, self.k, self.p, self.C, self.m = n, k, p, C or n, m
        self.sigma, self.eps = sigma, eps
        self.g = np.random.default_rng(seed)
        self.mu = np.arange(self.C, dtype=np.float64)
        self.w = np.full((n, self.C), eps)
        for i in range(n):
            self.w[i, i % self.C] = 1 - eps
            self.w[i] /= self.w[i].sum()
        self.rag = np.array([[self.sample(self.w[i]) for _ in range(m)] for i in range(n)])

    def sample(self, w):
        c = min(int(np.searchsorted(np.cumsum(w), self.g.random() * w.sum(), side="right")), self.C - 1)
        return self.mu[c] + self.sigma * self.g.standard_normal()

    def em(self, w, pts):
        logp = np.log(w)[None, :] - (pts[:, None] - self.mu[None, :]) ** 2 / (2 * self.sigma**2)
        logp -= logp.max(1, keepdims=True)
        g = np.exp(logp)
        g /= g.sum(1, keepdims=True)
        w = np.clip(g.mean(0), self.eps, 1 - self.eps)
        return w / w.sum()

    @staticmethod
    def replace_farthest(rag, x):
        rag = rag.copy()
        rag[int(np.argmax(np.abs(rag - x)))] = x
        return rag

    def step(self):
        n, w, rag = self.n, self.w, self.rag
        new_w, new_rag = w.copy(), rag.copy()
        for i in range(n):
            if self.g.random() < self.p:
                j = i
            else:
                d = np.array([np.linalg.norm(w[i] - w[j]) if j != i else np.inf for j in range(n)])
                j = int(np.argsort(d, kind="stable")[self.g.integers(self.k)])
            x = self.sample(w[i])
            w1 = self.em(w[j], self.replace_farthest(rag[j], x))
            y = self.sample(w1)
            new_rag[i] = self.replace_farthest(rag[i], y)
            new_w[i] = self.em(w[i], new_rag[i])
        self.w, self.rag = new_w, new_rag


def bench_numpy(n=30, k=5, p=0.5, steps=5):
    sim = NumpyGMM(n, k, p)
    sim.step()
    t = time.perf_counter()
    for _ in range(steps):
        sim.step()
    return n * steps / (time.perf_counter() - t)


# --------------------------------------------------------------------------- tensorsim
def make_cfg(n, k, p, replicas, C, knn="auto"):
    base = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "agents" / "gmm.yaml")
    base.components, base.knn = C, knn
    return OmegaConf.create({"agents": base, "graph": {"backend": "torch"},
                             "trial": {"n": n, "k": k, "p": p, "replicas": replicas}, "seed": 0})


def bench_engine(n, replicas, k, p, C, steps, device, knn="auto"):
    """-> (agent-steps/s over `steps` steps after step 0, seconds of one kNN call, seconds of step 0)"""
    cfg = make_cfg(n, k, p, replicas, C, knn)
    pops = build_populations(k, p, replicas, 0).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    agents = GMMAgents(cfg, pops, device)
    t = time.perf_counter()
    agents.step(0)  # exact ties everywhere (identical starting weights): its own cost
    sync()
    t0 = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(1, steps + 1):
        agents.step(s)
    sync()
    rate = pops.B * n * steps / (time.perf_counter() - t)
    t = time.perf_counter()
    agents.neighbours(agents.w)
    sync()
    return rate, time.perf_counter() - t, t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out/proxy_scaling.png")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after step 0)")
    ap.add_argument("--numpy-steps", type=int, default=5)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--replicas", default="1,10,100,1000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-total-s", type=float, default=None,
                    help="start no configuration after this many seconds (the JSON line still comes)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    base = bench_numpy(30, min(args.k, 29), args.p, args.numpy_steps)
    rows, skipped = [], []
    plan = ([("n", int(s), 1, args.k) for s in args.sizes.split(",") if s]
            + [("replicas", 30, int(s), min(args.k, 29)) for s in args.replicas.split(",") if s])
    for sweep, n, r, k in plan:
        if args.max_total_s is not None and time.perf_counter() - start > args.max_total_s:
            skipped.append({"sweep": sweep, "n": n, "replicas": r})
            continue
        rate, knn_s, t0 = bench_engine(n, r, k, args.p, 30, args.steps, device)
        rows.append({"sweep": sweep, "n": n, "replicas": r, "agent_steps_per_s": rate, "knn_s": knn_s,
                     "step0_s": t0, "speedup": rate / base})

    print(f"device {device}, torch threads {torch.get_num_threads()}, k={args.k}, p={args.p}, C=30, m=5, D=1")
    print(f"per-agent numpy reference (n=30): {base:,.0f} agent-steps/s")
    print(f"{'sweep':>9} {'n':>8} {'replicas':>8} {'agent-steps/s':>14} {'x numpy':>9} {'knn call s':>10} "
          f"{'step 0 s':>9} {'s/step':>8}")
    for r in rows:
        per_step = r["n"] * r["replicas"] / r["agent_steps_per_s"]
        print(f"{r['sweep']:>9} {r['n']:>8} {r['replicas']:>8} {r['agent_steps_per_s']:>14,.0f} "
              f"{r['speedup']:>9.1f} {r['knn_s']:>10.4f} {r['step0_s']:>9.3f} {per_step:>8.3f}")

    try:
        plot(rows, base, device, Path(args.out))
    except ImportError as e:  # a bare GPU image may lack matplotlib: the JSON line matters more
        print(f"no plot ({e})")
    emit({"device": str(device), "threads": torch.get_num_threads(), "k": args.k, "p": args.p,
          "numpy_agent_steps_per_s": round(base, 1), "skipped": skipped,
          "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]},
         torch.float64)  # GMM state is float64


def plot(rows, base, device, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, sweep, x, label in [(axes[0], "n", "n", "agents n (one population)"),
                                (axes[1], "replicas", "replicas", "packed replicas of n = 30")]:
        sel = [r for r in rows if r["sweep"] == sweep]
        if sel:
            ax.loglog([r[x] for r in sel], [r["agent_steps_per_s"] for r in sel], "o-", label="tensorsim.agents.gmm")
        ax.axhline(base, color="gray", ls="--", label="per-agent numpy (n = 30)")
        ax.set_xlabel(label)
        ax.set_ylabel("agent-steps / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"GMM proxy throughput ({device}, {torch.get_num_threads()} thread(s))")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
