"""`python -m tensorsim.report DIR`: the phase diagram over (k, p) and its figures, from runs on disk.

DIR may be a single run, a packed grid (cells/k{K}_p{P}/ under one run), a hydra multirun directory
(numbered job directories that are runs or grids), or any directory holding those; a directory without
summary.json is incomplete (still running or crashed) and is skipped with a note. Replicas of the same
(k, p), from one or many directories, are pooled. Written into DIR (or --out):

  phase.csv, phase.md    per (k, p): runs, final silos (mean, sample sd), share of runs per pattern,
                         median step of the last label change, mean S(t) over the last --window steps
  phase_silos.png        heatmap over (k, p) of the mean number of final silos
  phase_convergence.png  heatmap over (k, p) of the median step of the last label change
  curves_stability.png   S(t) per cell: mean over runs with a band (--band sd | iqr)
  curves_entropy.png     E(t) likewise
  silo_sizes.png         per cell: mean size over runs of the largest, 2nd largest, ... silo at each step
                         (stacked areas; needs agents.csv or agents.parquet)
  perspective.png        with --embed: the perspective space of Helm et al., classical MDS of the answer
                         embeddings at the --mds-steps, one shared frame per cell (first run with a
                         transcript), agents coloured by label; needs transcript.jsonl
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .errors import UserError  # noqa: E402
from .outputs import SUMMARY, parquet_batches, table_path  # noqa: E402
from .patterns import PATTERNS, last_change_step  # noqa: E402

RUN_MARKERS = ("metrics.csv", "metrics.csv.partial", "agents.csv.partial", "transcript.jsonl.partial", "metrics.parquet",
               "metrics.parquet.partial", "agents.parquet.partial", "transcript.parquet.partial", ".hydra")
MAX_RANKS = 6  # silo_sizes.png: ranks shown one by one; the rest are stacked as "other silos"


# ----------------------------------------------------------------------------------------- reading

@dataclass
class Cell:
    """One complete cell directory: a single run, or one cells/k{K}_p{P}/ of a grid."""
    dir: Path
    summary: dict
    S: dict = field(default_factory=dict)       # replica -> [T] float (nan at t = 0)
    E: dict = field(default_factory=dict)       # replica -> [T] float
    silos: dict = field(default_factory=dict)   # replica -> [T] int

    @property
    def k(self):
        return self.summary.get("k")

    @property
    def p(self):
        return self.summary.get("p")

    @property
    def replicas(self) -> list[dict]:
        return self.summary.get("replicas") or []


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable summary ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a summary must be a JSON object")
    return data


def _metrics_rows_parquet(path: Path) -> dict[int, dict[int, tuple]]:
    rows: dict[int, dict[int, tuple]] = {}
    for batch in parquet_batches(path, ["replica", "t", "stability", "entropy", "n_silos"]):
        c = batch.to_pydict()
        for r, t, s, e, k in zip(c["replica"], c["t"], c["stability"], c["entropy"], c["n_silos"]):
            rows.setdefault(r, {})[t] = (math.nan if s is None else s, e, k)
    return rows


def read_metrics(path: Path) -> tuple[dict, dict, dict]:
    """metrics.csv or metrics.parquet -> (S, E, n_silos), each replica -> array over t."""
    rows = _metrics_rows_parquet(path) if path.suffix == ".parquet" else _metrics_rows_csv(path)
    S, E, silos = {}, {}, {}
    for r, by_t in sorted(rows.items()):
        T = max(by_t) + 1
        if len(by_t) != T:
            raise UserError(f"{path}: replica {r} lacks steps (has {len(by_t)} of t = 0..{T - 1})")
        S[r] = np.array([by_t[t][0] for t in range(T)], dtype=float)
        E[r] = np.array([by_t[t][1] for t in range(T)], dtype=float)
        silos[r] = np.array([by_t[t][2] for t in range(T)], dtype=np.int64)
    return S, E, silos


def _metrics_rows_csv(path: Path) -> dict[int, dict[int, tuple]]:
    rows: dict[int, dict[int, tuple]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = {"replica", "t", "stability", "entropy", "n_silos"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise UserError(f"{path}: expected the columns {', '.join(sorted(need))}")
        for line, row in enumerate(reader, start=2):
            try:
                r, t = int(row["replica"]), int(row["t"])
                s = float(row["stability"]) if row["stability"] not in ("", None) else math.nan
                rows.setdefault(r, {})[t] = (s, float(row["entropy"]), int(row["n_silos"]))
            except (TypeError, ValueError):
                raise UserError(f"{path} line {line}: not a metrics row: {row}") from None
    return rows


def _agent_labels_parquet(path: Path, wanted) -> dict[int, np.ndarray]:
    """Two streamed passes: the shape of each replica's [T, n], then its labels (no dict per row)."""
    cols = ["replica", "t", "agent", "label"]
    shape: dict[int, tuple[int, int]] = {}
    for batch in parquet_batches(path, cols[:3]):
        rep, t, a = (batch.column(i).to_numpy() for i in range(3))
        for r in np.unique(rep).tolist():
            if wanted is None or r in wanted:
                sel = rep == r
                T0, n0 = shape.get(r, (0, 0))
                shape[r] = (max(T0, int(t[sel].max()) + 1), max(n0, int(a[sel].max()) + 1))
    out = {r: np.full(tn, -1, dtype=np.int64) for r, tn in shape.items()}
    for batch in parquet_batches(path, cols):
        rep, t, a, lab = (batch.column(i).to_numpy() for i in range(4))
        for r in np.unique(rep).tolist():
            if r in out:
                sel = rep == r
                out[r][t[sel], a[sel]] = lab[sel]
    return out


def read_agent_labels(path: Path, replicas=None) -> dict[int, np.ndarray]:
    """agents.csv or agents.parquet -> replica -> [T, n] label ids (only the given replicas, if any)."""
    wanted = None if replicas is None else set(replicas)
    if path.suffix == ".parquet":
        return _agent_labels_parquet(path, wanted)
    cells: dict[int, dict[tuple[int, int], int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        try:
            ir, it, ia, il = (header.index(c) for c in ("replica", "t", "agent", "label"))
        except ValueError:
            raise UserError(f"{path}: expected the columns replica, t, agent, label") from None
        for line, row in enumerate(reader, start=2):
            try:
                r = int(row[ir])
                if wanted is not None and r not in wanted:
                    continue
                cells.setdefault(r, {})[(int(row[it]), int(row[ia]))] = int(row[il])
            except (IndexError, ValueError):
                raise UserError(f"{path} line {line}: not an agents row") from None
    out = {}
    for r, d in cells.items():
        T = max(t for t, _ in d) + 1
        n = max(a for _, a in d) + 1
        lab = np.full((T, n), -1, dtype=np.int64)
        for (t, a), v in d.items():
            lab[t, a] = v
        out[r] = lab
    return out


def _looks_like_run(d: Path) -> bool:
    return any((d / m).exists() for m in RUN_MARKERS) or (d / "cells").is_dir()


def _load_cell(d: Path, notes: list[str]) -> Cell | None:
    summary = _load_json(d / SUMMARY)
    metrics = table_path(d, "metrics")
    if metrics is None:
        notes.append(f"skipped {d}: summary.json but no metrics.csv or metrics.parquet")
        return None
    cell = Cell(d, summary)
    cell.S, cell.E, cell.silos = read_metrics(metrics)
    return cell


def _complete_cells(dirs: list[Path], notes: list[str]) -> list[Cell]:
    """The cells of a grid's cell directories that finished; the others are noted."""
    cells = []
    for d in dirs:
        if not (d / SUMMARY).is_file():
            notes.append(f"skipped {d}: incomplete (no summary.json)")
        elif cell := _load_cell(d, notes):
            cells.append(cell)
    return cells


def find_cells(root: Path, notes: list[str], depth: int = 0) -> list[Cell]:
    """Every complete cell under root; incomplete run directories are noted and skipped."""
    summary_path = root / SUMMARY
    if summary_path.is_file():
        summary = _load_json(summary_path)
        if "cells" in summary:  # packed grid
            return _complete_cells([root / c.get("dir", "") for c in summary["cells"]], notes)
        cell = _load_cell(root, notes)
        return [cell] if cell else []
    if (root / "cells").is_dir():  # a grid that has not finished: its finished cells still count
        notes.append(f"{root}: incomplete grid (no summary.json); using its completed cells")
        return _complete_cells(sorted(p for p in (root / "cells").iterdir() if p.is_dir()), notes)
    if _looks_like_run(root):
        notes.append(f"skipped {root}: incomplete run (no summary.json: still running or crashed)")
        return []
    if depth >= 3:
        return []
    cells = []
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for d in sorted(subdirs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)):
        cells.extend(find_cells(d, notes, depth + 1))
    return cells


# -------------------------------------------------------------------------------------- statistics

def _key(k, p) -> tuple:
    return (k is not None, k if k is not None else 0, p is not None, p if p is not None else 0.0)


def group_cells(cells: list[Cell]) -> dict[tuple, list[Cell]]:
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.k, c.p), []).append(c)
    return dict(sorted(groups.items(), key=lambda kv: _key(*kv[0])))


def _runs(cells: list[Cell]):
    """(cell, replica record, S, E, silos) for every run of the cells that has metrics."""
    for c in cells:
        for rec in c.replicas:
            r = rec.get("replica")
            if r in c.S:
                yield c, rec, c.S[r], c.E[r], c.silos[r]


def window_mean_stability(S: np.ndarray, window: int) -> float:
    """Mean S(t) over the last `window` steps (t >= 1 only; fewer when the run is shorter)."""
    T = len(S)
    vals = S[max(1, T - window):]
    return float(np.mean(vals)) if len(vals) else math.nan


def cell_stats(cells: list[Cell], window: int) -> dict:
    finals, pats, last, smean, efinal = [], [], [], [], []
    for _, rec, S, E, silos in _runs(cells):
        finals.append(int(rec.get("final_n_silos", silos[-1])))
        pats.append(rec.get("pattern"))
        lc = rec.get("last_change_step")
        last.append(int(lc) if lc is not None else last_change_step([None] + S[1:].tolist()))
        smean.append(window_mean_stability(S, window))
        efinal.append(float(E[-1]))
    n = len(finals)
    stats = {"runs": n,
             "final_silos_mean": float(np.mean(finals)) if n else math.nan,
             "final_silos_sd": float(np.std(finals, ddof=1)) if n > 1 else math.nan}
    for pat in PATTERNS:
        stats[f"share_{pat}"] = (sum(x == pat for x in pats) / n) if n else math.nan
    stats["median_last_change_step"] = float(np.median(last)) if n else math.nan
    stats["mean_stability_window"] = float(np.mean(smean)) if n else math.nan
    stats["mean_final_entropy"] = float(np.mean(efinal)) if n else math.nan
    return stats


PHASE_COLUMNS = ["k", "p", "runs", "final_silos_mean", "final_silos_sd", "share_single", "share_stable",
                 "share_unstable", "share_decaying", "median_last_change_step", "mean_stability_window",
                 "mean_final_entropy"]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def rank_sizes(labels: np.ndarray) -> np.ndarray:
    """[T, n] label ids -> [T, n] silo sizes sorted largest first at each step (zeros pad)."""
    T, n = labels.shape
    _, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(T, n)
    counts = np.zeros((T, inv.max() + 1 if inv.size else 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(T), n), inv.ravel()), 1)
    out = np.zeros((T, n), dtype=np.int64)
    srt = -np.sort(-counts, axis=1)
    w = min(n, srt.shape[1])
    out[:, :w] = srt[:, :w]
    return out


# ------------------------------------------------------------------------------------ writing files

def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_csv_atomic(path: Path, header: list[str], rows) -> None:
    tmp = _tmp(path)
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def save_fig(fig, path: Path) -> None:
    tmp = _tmp(path)
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ figures

def _kp_label(k, p) -> str:
    if k is None and p is None:
        return "k, p n/a"
    ks = "?" if k is None else str(k)
    ps = "?" if p is None else f"{p:g}"
    return f"k={ks}, p={ps}"


def heatmap(path: Path, groups_stats: dict, value: str, title: str, cbar: str) -> None:
    ks = sorted({k for k, _ in groups_stats}, key=lambda v: (v is not None, v or 0))
    ps = sorted({p for _, p in groups_stats}, key=lambda v: (v is not None, v or 0))
    grid = np.full((len(ks), len(ps)), np.nan)
    for (k, p), st in groups_stats.items():
        grid[ks.index(k), ps.index(p)] = st[value]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(ps) + 1.5, 1.2 + 0.45 * len(ks) + 1.0))
    im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(ps)), ["?" if p is None else f"{p:g}" for p in ps])
    ax.set_yticks(range(len(ks)), ["?" if k is None else str(k) for k in ks])
    ax.set_xlabel("mirroring probability p")
    ax.set_ylabel("neighbours k")
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(ks)):
        for j in range(len(ps)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8,
                        color="black" if grid[i, j] > mid else "white")
    fig.colorbar(im, ax=ax, label=cbar)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)


def _panel_grid(keys: list[tuple]):
    """Subplots laid out k down, p across (one panel per (k, p) present)."""
    ks = sorted({k for k, _ in keys}, key=lambda v: (v is not None, v or 0))
    ps = sorted({p for _, p in keys}, key=lambda v: (v is not None, v or 0))
    fig, axes = plt.subplots(len(ks), len(ps), figsize=(min(3.0 * len(ps), 40) + 0.5, min(2.3 * len(ks), 60) + 0.6),
                             squeeze=False, sharex=True, sharey=True)
    where = {key: axes[ks.index(key[0]), ps.index(key[1])] for key in keys}
    for ax in axes.ravel():
        if ax not in where.values():
            ax.set_visible(False)
    return fig, axes, where


def _stack(series: list[np.ndarray]) -> np.ndarray:
    T = max(len(s) for s in series)
    arr = np.full((len(series), T), np.nan)
    for i, s in enumerate(series):
        arr[i, :len(s)] = s
    return arr


def curves(path: Path, groups: dict, which: str, band: str, ylabel: str, title: str) -> None:
    fig, axes, where = _panel_grid(list(groups))
    for key, cells in groups.items():
        ax = where[key]
        series = [S if which == "S" else E for _, _, S, E, _ in _runs(cells)]
        if not series:
            continue
        arr = _stack(series)
        t = np.arange(arr.shape[1])
        with np.errstate(all="ignore"), _quiet():
            mean = np.nanmean(arr, axis=0)
            if band == "iqr":
                lo, hi = np.nanpercentile(arr, 25, axis=0), np.nanpercentile(arr, 75, axis=0)
            else:
                sd = np.nanstd(arr, axis=0, ddof=1) if arr.shape[0] > 1 else np.zeros_like(mean)
                lo, hi = mean - sd, mean + sd
        ok = np.isfinite(mean)
        ax.fill_between(t[ok], lo[ok], hi[ok], alpha=0.25, lw=0)
        ax.plot(t[ok], mean[ok], lw=1.5, marker="o" if ok.sum() <= 12 else None, ms=3)
        ax.set_title(f"{_kp_label(*key)} ({arr.shape[0]} runs)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("step t")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(f"{title}: mean and {'interquartile range' if band == 'iqr' else '±1 sd'}", fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)


class _quiet:
    """Silence numpy's "mean of empty slice" warnings in figures."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        return self._w.__exit__(*a)


def rank_layer_style(ranks: int, other: bool) -> tuple[list[str], list[tuple]]:
    """Labels and colours of silo_sizes.png's layers: the ranks in pairwise distinct colours (the same in
    every panel), "other silos" in a grey no rank gets."""
    from .plots import distinct_colours, grey_shade

    labels = [f"silo rank {r + 1}" for r in range(ranks)] + (["other silos"] if other else [])
    return labels, distinct_colours(ranks) + ([grey_shade(0)] if other else [])


def silo_sizes(path: Path, groups: dict, notes: list[str]) -> bool:
    """Stacked areas of the mean rank-1, rank-2, ... silo sizes per cell. False if no agents.csv."""
    per_group = {}
    for key, cells in groups.items():
        mats = []
        for c in cells:
            agents = table_path(c.dir, "agents")
            if agents is None:
                continue
            for lab in read_agent_labels(agents).values():
                mats.append(rank_sizes(lab))
        if mats:
            T = max(m.shape[0] for m in mats)
            n = max(m.shape[1] for m in mats)
            arr = np.full((len(mats), T, n), np.nan)
            for i, m in enumerate(mats):
                arr[i, :m.shape[0], :m.shape[1]] = m
            with _quiet():
                per_group[key] = (np.nanmean(arr, axis=0), len(mats))
    if not per_group:
        notes.append("silo_sizes.png not written: no agents.csv or agents.parquet in the runs (output.agents=false)")
        return False
    fig, axes, where = _panel_grid(list(per_group))
    widest = max(per_group, key=lambda key: per_group[key][0].shape[1])
    legend = None
    for key, (mean, runs) in per_group.items():
        ax = where[key]
        R = min(MAX_RANKS, mean.shape[1])
        layers = [mean[:, r] for r in range(R)]
        if mean.shape[1] > R:
            layers.append(np.nansum(mean[:, R:], axis=1))
        labels, colours = rank_layer_style(R, mean.shape[1] > R)
        polys = ax.stackplot(np.arange(mean.shape[0]), *layers, labels=labels, colors=colours, alpha=0.85)
        ax.set_title(f"{_kp_label(*key)} ({runs} runs)", fontsize=8)
        if key == widest:  # every rank any panel shows is in the legend
            legend = (polys, labels)
    for ax in axes[-1]:
        ax.set_xlabel("step t")
    for ax in axes[:, 0]:
        ax.set_ylabel("agents")
    fig.legend(*legend, loc="upper right", fontsize=7)
    fig.suptitle("silo sizes, largest first (mean over runs)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    save_fig(fig, path)
    return True


# ------------------------------------------------------------------------------------------- report

def phase_markdown(stats: dict, window: int, sources: str, notes: list[str]) -> str:
    lines = ["# Phase diagram over (k, p)", "", f"Runs from {sources}. Final silos: mean ± sample sd over runs. "
             f"Patterns: share of runs. Last change: median step of the last label change. "
             f"S̄: mean stability over the last {window} steps.", "",
             "| k | p | runs | final silos | single | stable | unstable | decaying | last change | S̄ | final E |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (k, p), st in stats.items():
        sd = "" if math.isnan(st["final_silos_sd"]) else f" ± {st['final_silos_sd']:.2f}"
        lines.append(
            f"| {'' if k is None else k} | {'' if p is None else f'{p:g}'} | {st['runs']} | "
            f"{st['final_silos_mean']:.2f}{sd} | " + " | ".join(f"{st[f'share_{x}']:.2f}" for x in PATTERNS)
            + f" | {st['median_last_change_step']:g} | {st['mean_stability_window']:.3f} | "
              f"{st['mean_final_entropy']:.3f} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def report(root: Path, out: Path, window: int = 20, band: str = "sd", embed: bool = False,
           mds_steps: str = "first,middle,last", device: str = "auto", max_agents: int = 500) -> dict:
    """Write the report of every complete run under root into out; returns the per-(k, p) statistics."""
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
    out.mkdir(parents=True, exist_ok=True)
    groups = group_cells(cells)
    for key, cs in groups.items():
        kinds = {(c.summary.get("n"), c.summary.get("steps"), (c.summary.get("models") or {}).get("agents"))
                 for c in cs}
        if len(kinds) > 1:
            notes.append(f"{_kp_label(*key)} pools runs with different (n, steps, agents): {sorted(map(str, kinds))}")
        seeds = [rec.get("seed") for c in cs for rec in c.replicas if rec.get("seed") is not None]
        if len(seeds) != len(set(seeds)):
            notes.append(f"{_kp_label(*key)}: {len(seeds) - len(set(seeds))} run(s) repeat the seed of another run "
                         f"(the same run seed swept twice?); each is counted")
    T_max = max(len(s) for c in cells for s in c.S.values())
    if window > T_max - 1:
        notes.append(f"--window={window} is longer than the runs: S̄ averages every step t >= 1")
    if embed:  # check the steps before any figure is drawn
        from .perspective import parse_steps, perspective_figure, perspective_for_groups

        parse_steps(mds_steps, min(len(s) for c in cells for s in c.S.values()))
    stats = {key: cell_stats(cs, window) for key, cs in groups.items()}
    write_csv_atomic(out / "phase.csv", PHASE_COLUMNS,
                     [[_fmt(k), _fmt(p)] + [_fmt(st[c]) for c in PHASE_COLUMNS[2:]] for (k, p), st in stats.items()])
    heatmap(out / "phase_silos.png", stats, "final_silos_mean", "mean number of final silos", "silos")
    heatmap(out / "phase_convergence.png", stats, "median_last_change_step",
            "median step of the last label change", "step")
    curves(out / "curves_stability.png", groups, "S", band, "S(t)", "stability")
    curves(out / "curves_entropy.png", groups, "E", band, "E(t) [nats]", "entropy")
    silo_sizes(out / "silo_sizes.png", groups, notes)
    if embed:
        rows = perspective_for_groups(groups, mds_steps, device, max_agents, notes)
        if rows:
            perspective_figure(out / "perspective.png", rows)
        else:
            notes.append("perspective.png not written: no run with a transcript")
    else:
        notes.append("perspective.png not written: pass --embed to embed the transcripts")
    write_text_atomic(out / "phase.md", phase_markdown(stats, window, str(root), notes))
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tensorsim.report",
                                 description="Phase diagram and figures over (k, p) from a run, a packed grid "
                                             "or a multirun directory.")
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
    args = ap.parse_args(argv)
    try:
        out = args.out or args.dir
        stats = report(args.dir, out, args.window, args.band, args.embed, args.mds_steps, args.device,
                       args.mds_max_agents)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[report] {sum(s['runs'] for s in stats.values())} runs in {len(stats)} (k, p) cells -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
