"""The report's figures over its cells: phase heatmaps over two chosen swept keys (one panel per value
of the other keys that vary), S(t) and E(t) bands, silo sizes by rank."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..outputs import table_path
from .dims import CellKey, Layout, axis_title, fmt_value, key_values
from .plots import distinct_colours, grey_shade, plt, save_fig
from .runs import iter_runs, rank_sizes, read_agent_labels

MAX_RANKS = 6  # silo_sizes.png: ranks shown one by one; the rest are stacked as "other silos"


def phase_grids(stats: dict[CellKey, dict], value: str, layout: Layout) -> list[tuple[str, list, list, np.ndarray]]:
    """Per panel (a combination of layout.panels' values): (title, row values, column values, grid
    [rows, cols] of stats[key][value], nan where no cell). A strip has the one column [None]."""
    values = key_values(list(stats))
    rows = values[layout.rows]
    cols = values[layout.cols] if layout.cols else [None]
    out = []
    for combo in itertools.product(*(values[n] for n in layout.panels)):
        grid = np.full((len(rows), len(cols)), np.nan)
        for key, st in stats.items():
            if all(key[n] == v for n, v in zip(layout.panels, combo)):
                grid[rows.index(key[layout.rows]), cols.index(key[layout.cols]) if layout.cols else 0] = st[value]
        title = ", ".join(f"{n}={fmt_value(v)}" for n, v in zip(layout.panels, combo))
        if np.isfinite(grid).any():
            out.append((title, rows, cols, grid))
    return out


def heatmap(path: Path, stats: dict[CellKey, dict], value: str, title: str, cbar: str, layout: Layout) -> None:
    """stats[key][value] over layout.rows (y) x layout.cols (x), one panel per phase_grids panel, one
    colour scale over all of them."""
    panels = phase_grids(stats, value, layout)
    rows, cols = panels[0][1], panels[0][2]
    finite = np.concatenate([g[np.isfinite(g)] for *_, g in panels])
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    per_row = min(len(panels), 4)
    n_rows = -(-len(panels) // per_row)
    w, h = 1.2 + 0.8 * len(cols), 1.2 + 0.45 * len(rows)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(w * per_row + 1.5, h * n_rows + 1.0), squeeze=False,
                             layout="constrained")
    mid = (lo + hi) / 2
    for ax, (panel, _, _, grid) in zip(axes.ravel(), panels):
        im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(cols)) if layout.cols else [], [fmt_value(c) for c in cols] if layout.cols else [])
        ax.set_yticks(range(len(rows)), [fmt_value(r) for r in rows])
        ax.set_xlabel(axis_title(layout.cols) if layout.cols else "")
        ax.set_ylabel(axis_title(layout.rows))
        for i, j in zip(*np.nonzero(np.isfinite(grid))):
            ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8,
                    color="black" if grid[i, j] > mid else "white")
        ax.set_title(f"{title}: {panel}" if panel else title, fontsize=10 if len(panels) == 1 else 8)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=list(axes.ravel()[:len(panels)]), label=cbar)
    save_fig(fig, path)


def panel_grid(keys: list[CellKey], layout: Layout):
    """Subplots with layout.cols' values across (one column for a strip) and, down, every combination
    of the other keys' values present; one panel per key."""
    values = key_values(keys)
    cols = values[layout.cols] if layout.cols else [None]
    others = [n for n in values if n != layout.cols]
    rank = {n: {v: i for i, v in enumerate(values[n])} for n in others}
    rows = sorted({tuple(key[n] for n in others) for key in keys},
                  key=lambda row: tuple(rank[n][v] for n, v in zip(others, row)))
    fig, axes = plt.subplots(len(rows), len(cols),
                             figsize=(min(3.0 * len(cols), 40) + 0.5, min(2.3 * len(rows), 60) + 0.6),
                             squeeze=False, sharex=True, sharey=True)
    where = {key: axes[rows.index(tuple(key[n] for n in others)), cols.index(key[layout.cols]) if layout.cols else 0]
             for key in keys}
    for ax in axes.ravel():
        if ax not in where.values():
            ax.set_visible(False)
    return fig, axes, where


def stack_series(series: list[np.ndarray]) -> np.ndarray:
    T = max(len(s) for s in series)
    arr = np.full((len(series), T), np.nan)
    for i, s in enumerate(series):
        arr[i, :len(s)] = s
    return arr


def mean_band(series: list[np.ndarray], band: str) -> tuple[np.ndarray, ...]:
    """Runs' series -> (t, mean, lo, hi) over the steps where the mean is finite; the band is ±1 sample sd
    (zero for one run) or, with band="iqr", the interquartile range."""
    arr = stack_series(series)  # [runs, T]
    t = np.arange(arr.shape[1])
    with np.errstate(all="ignore"), quiet_warnings():
        mean = np.nanmean(arr, axis=0)
        if band == "iqr":
            lo, hi = np.nanpercentile(arr, 25, axis=0), np.nanpercentile(arr, 75, axis=0)
        else:
            sd = np.nanstd(arr, axis=0, ddof=1) if arr.shape[0] > 1 else np.zeros_like(mean)
            lo, hi = mean - sd, mean + sd
    ok = np.isfinite(mean)
    return t[ok], mean[ok], lo[ok], hi[ok]


def curves(path: Path, groups: dict, which: str, band: str, ylabel: str, title: str, layout: Layout) -> None:
    fig, axes, where = panel_grid(list(groups), layout)
    for key, cells in groups.items():
        ax = where[key]
        series = [S if which == "S" else E for _, _, S, E, _ in iter_runs(cells)]
        if not series:
            continue
        t, mean, lo, hi = mean_band(series, band)
        ax.fill_between(t, lo, hi, alpha=0.25, lw=0)
        ax.plot(t, mean, lw=1.5, marker="o" if len(t) <= 12 else None, ms=3)
        ax.set_title(f"{key.label()} ({len(series)} runs)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("step t")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(f"{title}: mean and {'interquartile range' if band == 'iqr' else '±1 sd'}", fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)


class quiet_warnings:
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
    labels = [f"silo rank {r + 1}" for r in range(ranks)] + (["other silos"] if other else [])
    return labels, distinct_colours(ranks) + ([grey_shade(0)] if other else [])


def silo_sizes(path: Path, groups: dict, notes: list[str], layout: Layout) -> bool:
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
            with quiet_warnings():
                per_group[key] = (np.nanmean(arr, axis=0), len(mats))
    if not per_group:
        notes.append("silo_sizes.png not written: no agents.csv or agents.parquet in the runs (output.agents=false)")
        return False
    fig, axes, where = panel_grid(list(per_group), layout)
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
        ax.set_title(f"{key.label()} ({runs} runs)", fontsize=8)
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

