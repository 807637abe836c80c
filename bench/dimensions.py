"""What each experiment dimension (README "Asking your own question") costs, and one question it answers.

  * cost: agent-steps/s of the plain trial and of the same trial with one dimension switched on
    (a k schedule, agent types, Beta p, noise, a fixed social graph with either partner rule, and all
    four at once), for GMM agents at n = 10^4 and LLM agents at n = 30, in one process; configs are
    interleaved over --rounds rounds and the median taken, so machine noise hits them alike. For LLM
    agents a dimension also changes what the agents answer, so new tokens per agent-step are printed
    beside the rate.
  * phase: final silos of the proxy (n = 30, k = 25, p = 0.5, T = 80) against the share of stubborn agents
    (p = 1), one run of --replicas replicas per share, through the public run path.

Prints a table and, as its last line, one JSON object with every number.

    python bench/dimensions.py [--gmm-n 10000] [--gmm-steps 5] [--llm-n 30] [--llm-steps 2] [--rounds 3]
                               [--skip-llm] [--replicas 20] [--shares 0,0.1,0.2,0.3,0.5,0.7,0.9]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, emit  # noqa: E402

from tensorsim.core.populations import trial_populations  # noqa: E402

STUBBORN = "trial.types=[{share:0.2,p:1.0,name:stubborn},{share:0.8}]"
WS = "trial.graph={ws:{k:6,p:0.1}}"


def dimensions(k: int) -> dict[str, list[str]]:
    """Each dimension's overrides on top of the plain trial (k: the plain trial's k)."""
    return {
        "plain": [],
        "k_schedule": [f"trial.k={{linear:[{k},1]}}"],
        "types_stubborn": [STUBBORN],
        "beta_p": ["trial.p={beta:[2,2]}"],
        "noise_swap": ["trial.noise=0.1", "trial.noise_mode=swap"],
        "noise_kb": ["trial.noise=0.1", "trial.noise_mode=kb"],
        "graph_ws_uniform": [WS],
        "graph_ws_knn_within": [WS, "graph.mix=knn_within"],
        "all_four": [f"trial.k={{linear:[{k},1]}}", STUBBORN, "trial.noise=0.1", "trial.noise_mode=swap", WS,
                     "graph.mix=knn_within"],
    }


def gmm_rate(base: list[str], extra: list[str], steps: int) -> float:
    """Agent-steps/s of GMM agents over `steps` steps after one warm-up step."""
    from tensorsim.agents.gmm import GMMAgents

    cfg = config(*base, *extra)
    agents = GMMAgents(cfg, trial_populations(cfg.trial, cfg.seed), torch.device("cpu"))
    agents.step(0)
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        agents.step(t)
    return agents.B * agents.n * steps / (time.perf_counter() - t0)


def llm_rate(base: list[str], extra: list[str], steps: int, loaded: dict) -> tuple[float, float]:
    """(agent-steps/s, new tokens per agent-step) of LLM agents over `steps` steps after one warm-up step;
    the model and embedder are loaded once into `loaded`."""
    from tensorsim.agents.llm import LLMAgents
    from tensorsim.knowledge import load_kb
    from tensorsim.lm.models import Embedder, load_llm

    cfg = config(*base, *extra)
    cpu = torch.device("cpu")
    if not loaded:
        loaded["model"], loaded["tok"] = load_llm(cfg.model, cpu, torch.float32)
        loaded["emb"] = Embedder(cfg.embedder, cpu)
    agents = LLMAgents(cfg, load_kb(cfg.kb).take(cfg.trial.n), trial_populations(cfg.trial, cfg.seed),
                       loaded["model"], loaded["tok"], loaded["emb"], cpu)
    agents.step(0)
    tokens = 0
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        tokens += agents.step(t).new_tokens
    seconds = time.perf_counter() - t0
    return agents.B * agents.n * steps / seconds, tokens / (agents.B * agents.n * steps)


def cost_table(rates: dict[str, list], extra: dict[str, list] | None = None) -> dict:
    """Median rate per dimension and its ratio to plain."""
    med = {name: statistics.median(r) for name, r in rates.items()}
    out = {}
    for name, m in med.items():
        out[name] = {"agent_steps_per_s": round(m, 2), "vs_plain": round(m / med["plain"], 3),
                     "rounds": [round(r, 2) for r in rates[name]]}
        if extra:
            out[name]["new_tokens_per_agent_step"] = round(statistics.median(extra[name]), 2)
    return out


def stubborn_phase(shares: list[float], replicas: int, steps: int) -> list[dict]:
    """Final silos of the proxy at k=25, p=0.5 against the stubborn share, one run per share (run.simulate)."""
    from tensorsim import run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for share in shares:
            types = ([] if share == 0 else
                     [f"trial.types=[{{share:{share},p:1.0,name:stubborn}},{{share:{1 - share:.6g}}}]"])
            cfg = config("agents=gmm", "trial=paper", "trial.k=25", "trial.p=0.5", f"trial.steps={steps}",
                         f"trial.replicas={replicas}", "output.plots=false", "output.agents=false", *types)
            d = Path(tmp) / f"share{share}"
            summary = run.simulate(cfg, d, hydra_subdir=None)
            silos = [r["final_n_silos"] for r in summary["replicas"]]
            rows.append({"stubborn_share": share, "stubborn_agents": round(share * 30),
                         "final_silos_mean": round(statistics.mean(silos), 2),
                         "final_silos_sd": round(statistics.stdev(silos), 2) if len(silos) > 1 else 0.0,
                         "final_silos_min": min(silos), "final_silos_max": max(silos),
                         "share_single_silo": round(sum(s == 1 for s in silos) / len(silos), 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gmm-n", type=int, default=10_000)
    ap.add_argument("--gmm-steps", type=int, default=5)
    ap.add_argument("--llm-n", type=int, default=30)
    ap.add_argument("--llm-steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--replicas", type=int, default=20)
    ap.add_argument("--phase-steps", type=int, default=80)
    ap.add_argument("--shares", default="0,0.1,0.2,0.3,0.5,0.7,0.9")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gmm_base = ["agents=gmm", "trial=paper", f"trial.n={args.gmm_n}", "trial.k=10", "agents.components=30",
                "output.plots=false"]
    gmm_dims = dimensions(10)
    gmm_rates = {name: [] for name in gmm_dims}
    for _ in range(args.rounds):
        for name, extra in gmm_dims.items():
            gmm_rates[name].append(gmm_rate(gmm_base, extra, args.gmm_steps))
    result = {"bench": "dimensions", "gmm": {"n": args.gmm_n, "k": 10, "p": 0.5, "components": 30,
                                             "steps": args.gmm_steps, "rounds": args.rounds,
                                             "cost": cost_table(gmm_rates)}}
    print(f"GMM agents, n={args.gmm_n}: median agent-steps/s (ratio to plain)")
    for name, row in result["gmm"]["cost"].items():
        print(f"  {name:22s} {row['agent_steps_per_s']:>12,.0f}  x{row['vs_plain']:.2f}")

    if not args.skip_llm:
        llm_base = ["trial=paper", f"trial.n={args.llm_n}"]
        llm_dims = dimensions(5)
        rates, tokens, loaded = {name: [] for name in llm_dims}, {name: [] for name in llm_dims}, {}
        for _ in range(args.rounds):
            for name, extra in llm_dims.items():
                r, tok = llm_rate(llm_base, extra, args.llm_steps, loaded)
                rates[name].append(r)
                tokens[name].append(tok)
        result["llm"] = {"n": args.llm_n, "k": 5, "p": 0.5, "model": "SmolLM2-135M-Instruct",
                         "steps": args.llm_steps, "rounds": args.rounds, "cost": cost_table(rates, tokens)}
        print(f"LLM agents, n={args.llm_n}: median agent-steps/s (ratio to plain), new tokens per agent-step")
        for name, row in result["llm"]["cost"].items():
            print(f"  {name:22s} {row['agent_steps_per_s']:>8.2f}  x{row['vs_plain']:.2f}  "
                  f"{row['new_tokens_per_agent_step']:.1f} tok")

    shares = [float(s) for s in args.shares.split(",")]
    result["stubborn_phase"] = {"n": 30, "k": 25, "p": 0.5, "steps": args.phase_steps, "replicas": args.replicas,
                                "rows": stubborn_phase(shares, args.replicas, args.phase_steps)}
    print(f"proxy, n=30, k=25, p=0.5: final silos against the share of stubborn agents (p=1), "
          f"{args.replicas} replicas")
    for row in result["stubborn_phase"]["rows"]:
        print(f"  share {row['stubborn_share']:.1f} ({row['stubborn_agents']:2d} agents): "
              f"{row['final_silos_mean']:5.2f} +- {row['final_silos_sd']:.2f} silos, "
              f"single silo in {row['share_single_silo']:.0%} of runs")
    emit(result, torch.float32)


if __name__ == "__main__":
    main()
