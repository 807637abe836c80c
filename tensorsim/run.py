"""One run: build the populations and agents, step them T times, measure, write every output."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from .agents import kind_module
from .analysis.plots import write_plots
from .checkpoint import (check_same_run, check_state_matches, hydra_record, load_checkpoint, record_run_config,
                         refuse_unfinished, remove_checkpoints, restore_hydra_record, resumed_config, save_checkpoint)
from .config import validate
from .core import metrics
from .core.memory import keep_freed_memory
from .core.patterns import PatternRules, last_change_step, run_pattern, silo_patterns
from .core.populations import trial_populations
from .lm.models import resolve_device, resolve_dtype
from .errors import DiskFullError, Preempted, UserError
from .outputs import (SUMMARY, check_room_for_tables, free_bytes, is_disk_full, make_cell_writers, refuse_completed,
                      resolve_format, table_bytes_estimate, write_csv_atomic, write_json_atomic)
from .preempt import StopRequests


def cell_title(cell: dict) -> str:
    """"k=5, p=0.5" (numbers as %g; a schedule or type label as it is)."""
    return ", ".join(f"{key}={v:g}" if isinstance(v, (int, float)) else f"{key}={v}" for key, v in cell.items())


EDGES = "graph_edges.csv"


def check_same_graphs(saved, graphs) -> None:
    """A resumed run must draw partners on the graphs it started with: an edge file edited since would
    silently change them."""
    now = None if graphs is None else graphs.nbrs
    if (saved is None) != (now is None) or (now is not None and not torch.equal(saved, now)):
        raise UserError("cannot resume: trial.graph gives other social graphs than the checkpoint's (was the "
                        "edge-list file changed?): restore it, or start again with overwrite=true")


def graph_edges(pops, members, replicas) -> list[tuple[int, int, int]]:
    """The fixed social graph of each member population as (replica, i, j) rows with i < j; [] for knn."""
    g = pops.graphs
    rows = []
    for b, r in zip(members, replicas):
        if g is None or not bool(g.fixed[b]):
            continue
        i = torch.arange(g.nbrs.shape[1])[:, None].expand_as(g.nbrs[b])
        keep = g.nbrs[b] > i  # each undirected edge once; padding (-1) never
        rows += [(r, a, c) for a, c in zip(i[keep].tolist(), g.nbrs[b][keep].tolist())]
    return rows


def protocol_summary(protocol: dict[str, torch.Tensor], members) -> dict:
    """Counters of the answer protocol summed over some populations, and the share of answers that named
    no label of the knowledge base (after their retries)."""
    members = list(members)
    out = {key: int(v[members].sum()) for key, v in protocol.items()}
    out["unlabeled_share"] = round(out["unlabeled_answers"] / out["answers"], 6) if out["answers"] else None
    return out


def simulate(cfg, run_dir: str | Path, hydra_subdir: str | None = ".hydra", overrides: list[str] | None = None) -> dict:
    """Run the configured trial into run_dir and return the top-level summary. With resume=true, continue
    the run in run_dir from its last checkpoint, with the config it started with (and the run's own
    Hydra files in run_dir/<hydra_subdir>: the resume command's go to <hydra_subdir>/resume/); overrides:
    the command line's, which a resumed run must not contradict.
    Raises Preempted after a stop signal (a checkpoint of the last finished step is written first) and
    DiskFullError when a write finds no room (tables cut back to the last checkpoint)."""
    with StopRequests() as stop:  # from the start: a signal while a model loads still ends in a checkpoint
        return _simulate(cfg, Path(run_dir), hydra_subdir, overrides, stop)


def _simulate(cfg, run_dir: Path, hydra_subdir: str | None, overrides: list[str] | None, stop: StopRequests) -> dict:
    ckpt = None
    if cfg.get("resume"):
        ckpt = load_checkpoint(run_dir)
        check_same_run(run_dir, ckpt["config"], cfg, overrides)
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
        refuse_unfinished(run_dir, bool(cfg.overwrite))
        remove_checkpoints(run_dir)  # an earlier run's checkpoint must never be resumed over these tables
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    pops = trial_populations(cfg.trial, cfg.seed)
    kind = kind_module(cfg.agents.kind)
    transcript = bool(cfg.output.transcript) and kind.WRITES_TEXT
    fmt = resolve_format(cfg.output.get("format", "csv"), pops.B * cfg.trial.n * cfg.trial.steps
                         if cfg.output.agents else 0)
    if kind.WRITES_TEXT and (transcript or cfg.output.agents):  # before the models load
        print(announce_table_sizes(cfg, kind, pops, run_dir, transcript, fmt, ckpt["t"] if ckpt else 0))
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
        check_resumable(ckpt, agents.state_dict(), (B, n), T)
        check_same_graphs(ckpt.get("graph_nbrs"), pops.graphs)
        history[:t0], S[:t0], E[:t0], silos[:t0] = ckpt["history"], ckpt["S"], ckpt["E"], ckpt["silos"]
        new_tokens, generations, elapsed_before = ckpt["new_tokens"], ckpt["generations"], ckpt["elapsed"]
        protocol = ckpt.get("protocol", {})
        agents.load_state_dict(ckpt["agents"])
        print(f"[tensorsim] resuming {run_dir} at step {t0} of {T}")
    writers = make_cell_writers(run_dir, pops, names, transcript, bool(cfg.output.agents),
                                ckpt["offsets"] if ckpt else None, fmt)
    config_container = ckpt["config"] if ckpt else OmegaConf.to_container(cfg, resolve=True)
    if ckpt is None:
        record_run_config(run_dir, config_container)

    start = time.perf_counter() - elapsed_before
    bar = tqdm(range(t0, T), desc=f"{cfg.trial.name} n={n} B={B}", unit="step", dynamic_ncols=True,
               initial=t0, total=T)
    saved = {"t": t0 if ckpt else None, "offsets": ckpt["offsets"] if ckpt else None}  # the last good checkpoint

    def save(t_next: int, elapsed: float) -> None:
        phase[0] = f"while writing the checkpoint at step {t_next}"
        offsets = [w.tell() for w in writers]
        save_checkpoint(run_dir, {
            "t": t_next, "config": config_container, "agents": agents.state_dict(),
            "history": history[:t_next].clone(), "S": S[:t_next].clone(), "E": E[:t_next].clone(),
            "silos": silos[:t_next].clone(), "new_tokens": new_tokens, "generations": generations,
            "protocol": {key: v.clone() for key, v in protocol.items()},
            "elapsed": float(elapsed), "offsets": offsets, "hydra_files": hydra_files,
            **({"graph_nbrs": pops.graphs.nbrs.clone()} if pops.graphs is not None else {})})
        saved.update(t=t_next, offsets=offsets)

    phase = [""]  # what was being written, for the disk-full message
    try:
        for t in bar:
            phase[0] = f"in step {t}"
            rec = agents.step(t)
            history[t] = rec.labels
            E[t] = metrics.entropy(rec.labels, L)
            silos[t] = metrics.n_silos(rec.labels, L)
            if t > 0:
                S[t] = metrics.stability(history[t - 1], rec.labels)
            k_t, p_t = pops.mean_at(t)  # [B] each
            for w in writers:
                w.write_step(t, rec.labels, rec.partner, rec.mirrored, S[t] if t > 0 else None, E[t], silos[t],
                             rec.contexts, rec.responses, n, k_t, p_t, rec.garbled)
                w.flush()
            new_tokens += rec.new_tokens
            generations += rec.generations
            for key, v in (rec.protocol or {}).items():
                protocol[key] = protocol.get(key, 0) + v
            elapsed = time.perf_counter() - start
            if t == t0 and T - t0 > 1:
                eta = (elapsed - elapsed_before) * (T - t0 - 1)
                tqdm.write(f"[tensorsim] step {t} took {elapsed - elapsed_before:.1f}s: ETA {eta / 60:.1f} min for "
                           f"the remaining {T - t0 - 1} steps ({B * n} agents per step)")
            due = every and (t + 1) % every == 0
            if t + 1 < T and (due or stop.requested):  # a stop signal: checkpoint this step at once
                save(t + 1, elapsed)
            if stop.requested and t + 1 < T:
                bar.close()
                tqdm.write(f"[tensorsim] {stop.name}: checkpoint written after step {t}")
                stop.hand_over()  # a job manager (submitit) requeues the job and exits here
                raise Preempted(stop.name, t + 1, run_dir)
            post = {"silos": f"{silos[t].double().mean():.1f}", "E": f"{E[t].mean():.2f}"}
            if t > 0:
                post["S"] = f"{S[t].mean():.2f}"
            if new_tokens:
                post["tok/s"] = f"{new_tokens / elapsed:.0f}"
            bar.set_postfix(post)
        wall = time.perf_counter() - start
        phase[0] = "while writing the final outputs"
        return finish(cfg, run_dir, agents, writers, pops, names, history, S, E, silos, protocol, rules, fmt,
                      dict(config=config_container, models=used, device=str(device), wall=wall,
                           new_tokens=new_tokens, generations=generations))
    except OSError as e:
        if not is_disk_full(e):
            raise
        for w, offsets in zip(writers, saved["offsets"] or [None] * len(writers)):
            w.rewind(offsets)
        kept = (f"tables cut back to the checkpoint at step {saved['t']}" if saved["t"] is not None
                else "no checkpoint yet: run it again, without resume=true, once space is freed")
        raise DiskFullError(f"no space left on the device ({e.strerror or e}) {phase[0]}; {kept}",
                            resumable=saved["t"] is not None) from None


def announce_table_sizes(cfg, kind, pops, run_dir: Path, transcript: bool, fmt: str, t0: int) -> str:
    """The line that states how large the agents and transcript tables of the steps t0..T-1 will get (an
    estimate from the knowledge base's answer lengths); UserError when they would not fit on the disk."""
    n, T = int(cfg.trial.n), int(cfg.trial.steps)
    text_bytes, names = kind.transcript_estimate(cfg)
    estimate = table_bytes_estimate(pops, names, n, T - t0, T, text_bytes if transcript else None,
                                    bool(cfg.output.agents))
    return check_room_for_tables(run_dir, estimate, pops.B * n * (T - t0), fmt, free_bytes(run_dir))


def check_resumable(ckpt: dict, built_state: dict, shape: tuple[int, int], steps: int) -> None:
    """The checkpoint's arrays fit this run: B x n populations, at most `steps` steps, and agent state of
    the entries, shapes and dtypes the agents of this config hold."""
    got = tuple(ckpt["history"].shape[1:])
    if got != shape:
        raise UserError(f"cannot resume: the checkpoint holds B x n = {got[0] if got else '?'} x "
                        f"{got[1] if len(got) > 1 else '?'} agents, this run {shape[0]} x {shape[1]}")
    if not 0 < ckpt["t"] < steps:
        raise UserError(f"cannot resume: the checkpoint is at step {ckpt['t']}, outside this run's 1..{steps - 1}")
    check_state_matches(built_state, ckpt["agents"])


def finish(cfg, run_dir: Path, agents, writers, pops, names, history, S, E, silos, protocol, rules, fmt, run: dict) -> dict:
    """Summaries, plots and the final tables of every cell, then the run's summary.json (written last: it
    marks the run complete); -> the top-level summary."""
    n, T, B = cfg.trial.n, cfg.trial.steps, pops.B
    wall = run["wall"]
    new_tokens, generations, config_container, used, device = (run["new_tokens"], run["generations"], run["config"],
                                                              run["models"], run["device"])
    common = {
        "config": config_container,
        "models": used, "device": str(device), "n": n, "steps": T,
        "wall_time_s": round(wall, 3), "new_tokens": new_tokens, "generations": generations,
        "new_tokens_per_s": round(new_tokens / wall, 2) if wall > 0 else None,
        "agent_steps_per_s": round(B * n * T / wall, 2) if wall > 0 else None,
        "populations": B, "output_format": fmt, "complete": True, "cell_keys": list(pops.cell_keys),
    }
    if protocol:
        common["protocol"] = protocol_summary(protocol, range(B))
    kind_outputs = getattr(agents, "write_outputs", None)  # a kind's own files (agents/lora.py: adapters, drift)
    if kind_outputs is not None:
        common.update(kind_outputs(run_dir))
    cell_summaries = []
    for c, w in enumerate(writers):
        cell = dict(zip(pops.cell_keys, pops.cells[c]))
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
        summary = dict(common, **cell, replicas=replicas)
        edges = graph_edges(pops, w.members, w.replicas)
        if edges:
            write_csv_atomic(w.dir / EDGES, ["replica", "i", "j"], edges)
            summary["graph_file"] = EDGES
        if protocol:
            summary["protocol"] = protocol_summary(protocol, w.members)
        if cfg.output.plots:
            stab = {r: [None if t == 0 else float(S[t, b]) for t in range(T)] for b, r in zip(w.members, w.replicas)}
            ent = {r: E[:, b].tolist() for b, r in zip(w.members, w.replicas)}
            lab = {r: history[:, b].numpy() for b, r in zip(w.members, w.replicas)}
            write_plots(w.dir, stab, ent, lab, names, f"{cfg.trial.name}: n={n}, {cell_title(cell)}")
        w.close(summary)
        cell_summaries.append({**cell, "dir": str(w.dir.relative_to(run_dir)) or ".",
                               "mean_final_n_silos": sum(x["final_n_silos"] for x in replicas) / len(replicas)})
    result = summary
    if len(writers) > 1:
        result = dict(common, cells=cell_summaries)
        write_json_atomic(run_dir / SUMMARY, result)
    for w in writers:
        w.cleanup()
    remove_checkpoints(run_dir)  # complete: summary.json marks it, no resume needed
    return result
