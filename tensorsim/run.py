"""One run: build the populations and agents, step them T times, measure, write every output."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from .agents import kind_module
from .analysis.plots import write_plots
from .checkpoint import CHECKPOINT, hydra_record, load_checkpoint, restore_hydra_record, resumed_config, save_checkpoint
from .config import validate
from .core import metrics
from .core.memory import keep_freed_memory
from .core.patterns import PatternRules, last_change_step, run_pattern, silo_patterns
from .core.populations import build_populations
from .lm.models import resolve_device, resolve_dtype
from .outputs import SUMMARY, make_cell_writers, refuse_completed, resolve_format, write_json_atomic


def protocol_summary(protocol: dict[str, torch.Tensor], members) -> dict:
    """Counters of the answer protocol summed over some populations, and the share of answers that named
    no label of the knowledge base (after their retries)."""
    members = list(members)
    out = {key: int(v[members].sum()) for key, v in protocol.items()}
    out["unlabeled_share"] = round(out["unlabeled_answers"] / out["answers"], 6) if out["answers"] else None
    return out


def simulate(cfg, run_dir: str | Path, hydra_subdir: str | None = ".hydra") -> dict:
    """Run the configured trial into run_dir and return the top-level summary. With resume=true, continue
    the run in run_dir from its last checkpoint, with the config it started with (and the run's own
    Hydra files in run_dir/<hydra_subdir>: the resume command's go to <hydra_subdir>/resume/)."""
    run_dir = Path(run_dir)
    ckpt = None
    if cfg.get("resume"):
        ckpt = load_checkpoint(run_dir)
        cfg = resumed_config(ckpt["config"], cfg)
        hydra_files = ckpt.get("hydra_files", {})
        restore_hydra_record(run_dir, hydra_subdir, hydra_files)
    else:
        hydra_files = hydra_record(run_dir, hydra_subdir)
    validate(cfg)
    keep_freed_memory()  # big per-step tensors reuse pages instead of faulting in fresh ones (memory.py)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if ckpt is None:
        refuse_completed(run_dir, bool(cfg.overwrite))
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed)
    kind = kind_module(cfg.agents.kind)
    agents, names, used = kind.build(cfg, pops.to(device), device, dtype)
    L = len(names)
    n, T, B = cfg.trial.n, cfg.trial.steps, pops.B
    rules = PatternRules(**OmegaConf.to_container(cfg.pattern, resolve=True))
    every = int(cfg.checkpoint.every)

    history = torch.empty(T, B, n, dtype=torch.int64)  # labels of every step
    S = torch.full((T, B), float("nan"), dtype=torch.float64)
    E = torch.empty(T, B, dtype=torch.float64)
    silos = torch.empty(T, B, dtype=torch.int64)
    new_tokens = generations = 0
    protocol: dict[str, torch.Tensor] = {}  # answer-protocol counters per population [B] (LLM agents)
    t0, elapsed_before = 0, 0.0
    if ckpt is not None:
        t0 = ckpt["t"]
        history[:t0], S[:t0], E[:t0], silos[:t0] = ckpt["history"], ckpt["S"], ckpt["E"], ckpt["silos"]
        new_tokens, generations, elapsed_before = ckpt["new_tokens"], ckpt["generations"], ckpt["elapsed"]
        protocol = ckpt.get("protocol", {})
        agents.load_state_dict(ckpt["agents"])
        print(f"[tensorsim] resuming {run_dir} at step {t0} of {T}")
    transcript = bool(cfg.output.transcript) and kind.WRITES_TEXT
    fmt = resolve_format(cfg.output.get("format", "csv"), B * n * T if cfg.output.agents else 0)
    writers = make_cell_writers(run_dir, pops, names, transcript, bool(cfg.output.agents),
                                ckpt["offsets"] if ckpt else None, fmt)
    config_container = ckpt["config"] if ckpt else OmegaConf.to_container(cfg, resolve=True)

    start = time.perf_counter() - elapsed_before
    bar = tqdm(range(t0, T), desc=f"{cfg.trial.name} n={n} B={B}", unit="step", dynamic_ncols=True,
               initial=t0, total=T)
    for t in bar:
        rec = agents.step(t)
        history[t] = rec.labels
        E[t] = metrics.entropy(rec.labels, L)
        silos[t] = metrics.n_silos(rec.labels, L)
        if t > 0:
            S[t] = metrics.stability(history[t - 1], rec.labels)
        for w in writers:
            w.write_step(t, rec.labels, rec.partner, rec.mirrored, S[t] if t > 0 else None, E[t], silos[t],
                         rec.contexts, rec.responses, n)
            w.flush()
        new_tokens += rec.new_tokens
        generations += rec.generations
        for key, v in (rec.protocol or {}).items():
            protocol[key] = protocol.get(key, 0) + v
        elapsed = time.perf_counter() - start
        if t == t0 and T - t0 > 1:
            eta = (elapsed - elapsed_before) * (T - t0 - 1)
            tqdm.write(f"[tensorsim] step {t} took {elapsed - elapsed_before:.1f}s: ETA {eta / 60:.1f} min for the "
                       f"remaining {T - t0 - 1} steps ({B * n} agents per step)")
        if every and (t + 1) % every == 0 and t + 1 < T:
            save_checkpoint(run_dir, {
                "t": t + 1, "config": config_container, "agents": agents.state_dict(),
                "history": history[:t + 1].clone(), "S": S[:t + 1].clone(), "E": E[:t + 1].clone(),
                "silos": silos[:t + 1].clone(), "new_tokens": new_tokens, "generations": generations,
                "protocol": {key: v.clone() for key, v in protocol.items()},
                "elapsed": elapsed, "offsets": [w.tell() for w in writers], "hydra_files": hydra_files})
        post = {"silos": f"{silos[t].double().mean():.1f}", "E": f"{E[t].mean():.2f}"}
        if t > 0:
            post["S"] = f"{S[t].mean():.2f}"
        if new_tokens:
            post["tok/s"] = f"{new_tokens / elapsed:.0f}"
        bar.set_postfix(post)
    wall = time.perf_counter() - start

    common = {
        "config": config_container,
        "models": used, "device": str(device), "n": n, "steps": T,
        "wall_time_s": round(wall, 3), "new_tokens": new_tokens, "generations": generations,
        "new_tokens_per_s": round(new_tokens / wall, 2) if wall > 0 else None,
        "agent_steps_per_s": round(B * n * T / wall, 2) if wall > 0 else None,
        "populations": B, "output_format": fmt, "complete": True,
    }
    if protocol:
        common["protocol"] = protocol_summary(protocol, range(B))
    kind_outputs = getattr(agents, "write_outputs", None)  # a kind's own files (agents/lora.py: adapters, drift)
    if kind_outputs is not None:
        common.update(kind_outputs(run_dir))
    cell_summaries = []
    for c, w in enumerate(writers):
        k, p = pops.cells[c]
        replicas = []
        for b, r in zip(w.members, w.replicas):
            s_list = [None if t == 0 else float(S[t, b]) for t in range(T)]
            e_list, n_list = E[:, b].tolist(), silos[:, b].tolist()
            replicas.append({
                "replica": r, "seed": int(pops.seeds[b]), "final_n_silos": n_list[-1],
                "pattern": run_pattern(s_list, n_list, e_list, rules),
                "last_change_step": last_change_step(s_list),
                "final_entropy": e_list[-1],
                "silos": silo_patterns(history[:, b], rules, names),
                "final_unlabeled": int((history[-1, b] < 0).sum()),
            })
            if protocol:
                replicas[-1]["protocol"] = protocol_summary(protocol, [b])
        summary = dict(common, k=k, p=p, replicas=replicas)
        if protocol:
            summary["protocol"] = protocol_summary(protocol, w.members)
        if cfg.output.plots:
            stab = {r: [None if t == 0 else float(S[t, b]) for t in range(T)] for b, r in zip(w.members, w.replicas)}
            ent = {r: E[:, b].tolist() for b, r in zip(w.members, w.replicas)}
            lab = {r: history[:, b].numpy() for b, r in zip(w.members, w.replicas)}
            write_plots(w.dir, stab, ent, lab, names, f"{cfg.trial.name}: n={n}, k={k}, p={p:g}")
        w.close(summary)
        cell_summaries.append({"k": k, "p": p, "dir": str(w.dir.relative_to(run_dir)) or ".",
                               "mean_final_n_silos": sum(x["final_n_silos"] for x in replicas) / len(replicas)})
    result = summary
    if len(writers) > 1:
        result = dict(common, cells=cell_summaries)
        write_json_atomic(run_dir / SUMMARY, result)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # complete: summary.json marks it, no resume needed
    return result
