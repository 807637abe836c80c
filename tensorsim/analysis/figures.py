"""The report's figures over (k, p) cells: heatmaps, S(t) and E(t) bands, silo sizes by rank."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..outputs import table_path
from .plots import distinct_colours, grey_shade, plt, save_fig
from .runs import fmt_value, iter_runs, rank_sizes, read_agent_labels, value_order

MAX_RANKS = 6  # silo_sizes.png: ranks shown one by one; the rest are stacked as "other silos"


def kp_label(k, p) -> str:
    if k is None and p is None:
        return "k, p n/a"
    return f"k={fmt_value(k)}, p={fmt_value(p)}"


def heatmap(path: Path, groups_stats: dict, value: str, title: str, cbar: str) -> None:
    ks = sorted({k for k, _ in groups_stats}, key=value_order)
    ps = sorted({p for _, p in groups_stats}, key=value_order)
    grid = np.full((len(ks), len(ps)), np.nan)
    for (k, p), st in groups_stats.items():
        grid[ks.index(k), ps.index(p)] = st[value]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(ps) + 1.5, 1.2 + 0.45 * len(ks) + 1.0))
    im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(ps)), [fmt_value(p) for p in ps])
    ax.set_yticks(range(len(ks)), [fmt_value(k) for k in ks])
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


def panel_grid(keys: list[tuple]):
    """Subplots laid out k down, p across (one panel per (k, p) present)."""
    ks = sorted({k for k, _ in keys}, key=value_order)
    ps = sorted({p for _, p in keys}, key=value_order)
    fig, axes = plt.subplots(len(ks), len(ps), figsize=(min(3.0 * len(ps), 40) + 0.5, min(2.3 * len(ks), 60) + 0.6),
                             squeeze=False, sharex=True, sharey=True)
    where = {key: axes[ks.index(key[0]), ps.index(key[1])] for key in keys}
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


def curves(path: Path, groups: dict, which: str, band: str, ylabel: str, title: str) -> None:
    fig, axes, where = panel_grid(list(groups))
    for key, cells in groups.items():
        ax = where[key]
        series = [S if which == "S" else E for _, _, S, E, _ in iter_runs(cells)]
        if not series:
            continue
        t, mean, lo, hi = mean_band(series, band)
        ax.fill_between(t, lo, hi, alpha=0.25, lw=0)
        ax.plot(t, mean, lw=1.5, marker="o" if len(t) <= 12 else None, ms=3)
        ax.set_title(f"{kp_label(*key)} ({len(series)} runs)", fontsize=8)
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
            with quiet_warnings():
                per_group[key] = (np.nanmean(arr, axis=0), len(mats))
    if not per_group:
        notes.append("silo_sizes.png not written: no agents.csv or agents.parquet in the runs (output.agents=false)")
        return False
    fig, axes, where = panel_grid(list(per_group))
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
        ax.set_title(f"{kp_label(*key)} ({runs} runs)", fontsize=8)
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

