"""`python -m tensorsim.report DIR`: the phase diagram over the swept keys and its figures, from runs on disk.

DIR may be a single run, a packed grid (cells/k{K}_p{P}/ under one run), a hydra multirun directory
(numbered job directories that are runs or grids), or any directory holding those; a directory without
summary.json is incomplete (still running or crashed) and is skipped with a note. Replicas of the same
cell (the same values of every swept key: k, p, noise, graph, ...), from one or many directories, are
pooled. The heatmaps draw two of the keys that vary (--axes; default k and p when both vary, else the two
that vary most, a strip when one varies), one panel per value of the other keys that vary. Written into
DIR (or --out):

  phase.csv, phase.md    per cell (a column per swept key): runs, final silos (mean, sample sd), share of
                         runs per pattern, median step of the last label change, mean S(t) over the last
                         --window steps
  phase_silos.png        heatmap over the --axes of the mean number of final silos
  phase_convergence.png  heatmap over the --axes of the median step of the last label change
  curves_stability.png   S(t) per cell: mean over runs with a band (--band sd | iqr)
  curves_entropy.png     E(t) likewise
  silo_sizes.png         per cell: mean size over runs of the largest, 2nd largest, ... silo at each step
                         (stacked areas; needs agents.csv or agents.parquet)
  drift.png              agents=lora runs: per cell, the adapters' update norm and their mean cosine
                         distance next to the answers' (drift.csv); phase.md gets a table of both
  perspective.png        with --embed: the perspective space of Helm et al., classical MDS of the answer
                         embeddings at the --mds-steps, one shared frame per cell (first run with a
                         transcript), agents coloured by label; needs transcript.jsonl
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..core.patterns import PATTERNS
from ..errors import UserError
from ..outputs import write_csv_atomic, write_text_atomic
from .drift import drift_figure, drift_for_groups, drift_markdown, drift_stats
from .dims import Layout, choose_layout, fmt_value, key_values
from .figures import curves, heatmap, silo_sizes
from .runs import PHASE_STATS, cell_stats, find_cells, group_cells, phase_columns, swept_keys
from .types import type_columns, type_stats


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


# ------------------------------------------------------------------------------------------- report

def _key_cells(values) -> str:
    """A table row's swept values as markdown cells (blank where missing)."""
    return " | ".join(fmt_value(v) if v is not None else "" for v in values)


def types_markdown(rows: list[dict], names: tuple[str, ...], window: int) -> list[str]:
    """The split by agent type (trial.types) as a markdown section; [] without types."""
    if not rows:
        return []
    lines = ["", "## By agent type", "", f"Means over runs, among each type's agents: final silos, final entropy E, "
             f"S̄ over the last {window} steps, share of the type in the population's largest final silo.", "",
             "| " + " | ".join(names) + " | type | runs | agents | final silos | final E | S̄ | in largest silo |",
             "|---" * (len(names) + 8) + "|"]
    for r in rows:
        lines.append(f"| {_key_cells([r[n] for n in names])} | {r['type']} | {r['runs']} | {r['agents']:.3g} | "
                     f"{r['final_silos']:.2f} | {r['final_entropy']:.3f} | {r['mean_stability_window']:.3f} | "
                     f"{r['share_in_largest_silo']:.2f} |")
    return lines


def phase_markdown(stats: dict, names: tuple[str, ...], layout: Layout, window: int, sources: str,
                   notes: list[str], by_type=(), extra: list[str] = ()) -> str:
    """phase.md: which dimensions the heatmaps draw, then one table row per cell (a column per swept key)."""
    lines = [f"# Phase diagram over ({', '.join(names)})", "",
             f"Heatmaps (phase_silos.png, phase_convergence.png): {layout.describe()}.", "",
             f"Runs from {sources}. Final silos: mean ± sample sd over runs. "
             f"Patterns: share of runs. Last change: median step of the last label change. "
             f"S̄: mean stability over the last {window} steps.", "",
             "| " + " | ".join(names) + " | runs | final silos | single | stable | unstable | decaying | last change "
             "| S̄ | final E |",
             "|---" * (len(names) + 9) + "|"]
    for key, st in stats.items():
        sd = "" if math.isnan(st["final_silos_sd"]) else f" ± {st['final_silos_sd']:.2f}"
        lines.append(
            f"| {_key_cells([key[n] for n in names])} | {st['runs']} | "
            f"{st['final_silos_mean']:.2f}{sd} | " + " | ".join(f"{st[f'share_{x}']:.2f}" for x in PATTERNS)
            + f" | {st['median_last_change_step']:g} | {st['mean_stability_window']:.3f} | "
              f"{st['mean_final_entropy']:.3f} |")
    lines += types_markdown(list(by_type), names, window)
    lines += list(extra)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def report(root: Path, out: Path, window: int = 20, band: str = "sd", embed: bool = False,
           mds_steps: str = "first,middle,last", device: str = "auto", max_agents: int = 500,
           axes: str | None = None) -> dict:
    """Write the report of every complete run under root into out; returns the per-cell statistics
    (CellKey -> stats). axes: --axes, the two swept keys the heatmaps draw ("k,noise"; None: default)."""
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    if window < 1:
        raise UserError(f"--window={window} is not allowed: an integer >= 1")
    notes: list[str] = []
    cells = find_cells(root, notes)
    for n in notes:
        print(f"[report] {n}", file=sys.stderr)
    if not cells:
        raise UserError(f"{root}: no complete run found (a complete run directory holds summary.json)")
    names = swept_keys(cells)
    groups = group_cells(cells, names)
    layout = choose_layout(key_values(list(groups)), axes)  # a bad --axes stops before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for key, cs in groups.items():
        kinds = {(c.summary.get("n"), c.summary.get("steps"), (c.summary.get("models") or {}).get("agents"))
                 for c in cs}
        if len(kinds) > 1:
            notes.append(f"{key.label()} pools runs with different (n, steps, agents): {sorted(map(str, kinds))}")
        seeds = [rec.get("seed") for c in cs for rec in c.replicas if rec.get("seed") is not None]
        if len(seeds) != len(set(seeds)):
            notes.append(f"{key.label()}: {len(seeds) - len(set(seeds))} run(s) repeat the seed of another run "
                         f"(the same run seed swept twice?); each is counted")
    T_max = max(len(s) for c in cells for s in c.S.values())
    if window > T_max - 1:
        notes.append(f"--window={window} is longer than the runs: S̄ averages every step t >= 1")
    if embed:  # check the steps before any figure is drawn
        from .perspective import parse_steps, perspective_figure, perspective_for_groups

        parse_steps(mds_steps, min(len(s) for c in cells for s in c.S.values()))
    stats = {key: cell_stats(cs, window) for key, cs in groups.items()}
    write_csv_atomic(out / "phase.csv", phase_columns(names),
                     [[_fmt(key[n]) for n in names] + [_fmt(st[c]) for c in PHASE_STATS] for key, st in stats.items()])
    heatmap(out / "phase_silos.png", stats, "final_silos_mean", "mean number of final silos", "silos", layout)
    heatmap(out / "phase_convergence.png", stats, "median_last_change_step",
            "median step of the last label change", "step", layout)
    curves(out / "curves_stability.png", groups, "S", band, "S(t)", "stability", layout)
    curves(out / "curves_entropy.png", groups, "E", band, "E(t) [nats]", "entropy", layout)
    silo_sizes(out / "silo_sizes.png", groups, notes, layout)
    if embed:
        rows = perspective_for_groups(groups, mds_steps, device, max_agents, notes)
        if rows:
            perspective_figure(out / "perspective.png", rows)
        else:
            notes.append("perspective.png not written: no run with a transcript")
    else:
        notes.append("perspective.png not written: pass --embed to embed the transcripts")
    by_type = type_stats(groups, window)
    if by_type:
        columns = type_columns(names)
        write_csv_atomic(out / "types.csv", columns, [[_fmt(r[c]) for c in columns] for r in by_type])
    drift = drift_for_groups(groups)
    drift_lines = []
    if drift:
        drift_stats_by_cell = {key: drift_stats(d) for key, d in drift.items()}
        drift_figure(out / "drift.png", drift, layout)
        drift_lines = drift_markdown(drift_stats_by_cell, names)
        for key, st in drift_stats_by_cell.items():
            stats[key]["drift"] = st
    write_text_atomic(out / "phase.md", phase_markdown(stats, names, layout, window, str(root), notes, by_type,
                                                       drift_lines))
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tensorsim.report",
                                 description="Phase diagram and figures over the swept keys (k, p, noise, ...) "
                                             "from a run, a packed grid or a multirun directory.")
    ap.add_argument("dir", type=Path, help="run, packed-grid run or multirun directory")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: DIR)")
    ap.add_argument("--window", type=int, default=20, help="steps at the end over which S is averaged (default 20)")
    ap.add_argument("--band", choices=("sd", "iqr"), default="sd", help="band around the mean curves")
    ap.add_argument("--embed", action="store_true",
                    help="embed transcripts with the run's embedder for the perspective space (MDS) figure")
    ap.add_argument("--mds-steps", default="first,middle,last",
                    help="comma-separated steps for the MDS figure: integers (negative from the end), first, "
                         "middle, last")
    ap.add_argument("--mds-max-agents", type=int, default=500, help="agents shown per MDS panel at most")
    ap.add_argument("--device", default="auto", help="device for the embedder (auto, cpu, cuda, cuda:N)")
    ap.add_argument("--axes", default=None,
                    help="the two swept keys the heatmaps draw, rows then columns (e.g. k,noise; one key: a "
                         "strip); default k,p when both vary, else the two that vary most")
    args = ap.parse_args(argv)
    try:
        out = args.out or args.dir
        stats = report(args.dir, out, args.window, args.band, args.embed, args.mds_steps, args.device,
                       args.mds_max_agents, args.axes)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[report] {sum(s['runs'] for s in stats.values())} runs in {len(stats)} cells -> {out}")
    return 0

