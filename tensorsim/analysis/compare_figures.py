"""compare's figures: A, B and A − B heatmaps over (k, p) with differing cells boxed, and S(t) / E(t)
bands of both sets overlaid per cell."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from .figures import kp_label, mean_band, panel_grid
from .plots import plt, save_fig
from .runs import iter_runs

SIDE_COLOURS = ("tab:blue", "tab:orange")


def _axes_values(keys) -> tuple[list, list]:
    ks = sorted({k for k, _ in keys}, key=lambda v: (v is not None, v or 0))
    ps = sorted({p for _, p in keys}, key=lambda v: (v is not None, v or 0))
    return ks, ps


def _grid(rows: list[dict], field: str, ks: list, ps: list) -> np.ndarray:
    grid = np.full((len(ks), len(ps)), np.nan)
    for r in rows:
        grid[ks.index(r["k"]), ps.index(r["p"])] = r[field]
    return grid


def _draw(ax, grid: np.ndarray, ks, ps, cmap: str, vmin: float, vmax: float, flags=None):
    im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(ps)), [f"{p:g}" if p is not None else "?" for p in ps])
    ax.set_yticks(range(len(ks)), [str(k) if k is not None else "?" for k in ks])
    for i in range(len(ks)):
        for j in range(len(ps)):
            if np.isfinite(grid[i, j]):
                mark = "*" if flags is not None and flags[i, j] else ""
                r, g, b, _ = im.cmap(im.norm(grid[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells, black on light
                ax.text(j, i, f"{grid[i, j]:.3g}{mark}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
            if flags is not None and flags[i, j]:  # the cells that differ at the chosen level
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ec="black"))
    return im


def difference_heatmaps(path: Path, rows: list[dict], metrics: dict[str, str], names: tuple[str, str]) -> None:
    """One row of panels per metric (metrics: name -> title): A's mean, B's mean (one colour scale),
    A − B (diverging, centred at 0)."""
    ks, ps = _axes_values({(r["k"], r["p"]) for r in rows})
    w = 1.0 + 0.7 * len(ps)
    fig, axes = plt.subplots(len(metrics), 3, figsize=(3 * w + 2.5, 0.9 + len(metrics) * (0.9 + 0.35 * len(ks))),
                             squeeze=False, layout="constrained")
    for row_axes, m in zip(axes, metrics):
        mine = [r for r in rows if r["metric"] == m]
        a, b, d = (_grid(mine, f, ks, ps) for f in ("mean_a", "mean_b", "diff"))
        flags = _grid([dict(r, differs=float(r["differs"])) for r in mine], "differs", ks, ps) == 1
        both = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
        lo, hi = (both.min(), both.max()) if both.size else (0.0, 1.0)
        span = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.0
        span = span if span > 0 and math.isfinite(span) else 1.0
        for ax, grid, title in ((row_axes[0], a, names[0]), (row_axes[1], b, names[1])):
            im = _draw(ax, grid, ks, ps, "viridis", lo, hi)
            ax.set_title(f"{metrics[m]}: {title}", fontsize=8)
        fig.colorbar(im, ax=list(row_axes[:2]), fraction=0.04)
        im = _draw(row_axes[2], d, ks, ps, "RdBu_r", -span, span, flags)
        row_axes[2].set_title(f"{names[0]} − {names[1]} (boxed *: differs)", fontsize=8)
        fig.colorbar(im, ax=row_axes[2], fraction=0.08)
        row_axes[0].set_ylabel("neighbours k")
    for ax in axes[-1]:
        ax.set_xlabel("mirroring probability p")
    save_fig(fig, path)


def _band(ax, series: list[np.ndarray], band: str, colour: str, label: str) -> None:
    t, mean, lo, hi = mean_band(series, band)
    ax.fill_between(t, lo, hi, alpha=0.2, lw=0, color=colour)
    ax.plot(t, mean, lw=1.4, color=colour, label=f"{label} ({len(series)} runs)")


def overlaid_curves(path: Path, keys: list[tuple], A: dict, B: dict, which: str, band: str,
                    names: tuple[str, str], differs: set) -> None:
    """S(t) or E(t) per common cell: each set's mean and band, in its own colour; the titles of the
    cells in differs say so."""
    fig, axes, where = panel_grid(keys)
    for key in keys:
        ax = where[key]
        for groups, colour, name in ((A, SIDE_COLOURS[0], names[0]), (B, SIDE_COLOURS[1], names[1])):
            series = [S if which == "S" else E for _, _, S, E, _ in iter_runs(groups[key])]
            if series:
                _band(ax, series, band, colour, name)
        ax.set_title(kp_label(*key) + (": differs" if key in differs else ""), fontsize=8,
                     fontweight="bold" if key in differs else "normal")
        ax.legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("step t")
    for ax in axes[:, 0]:
        ax.set_ylabel("S(t)" if which == "S" else "E(t) [nats]")
    what = "stability" if which == "S" else "entropy"
    fig.suptitle(f"{what}: {names[0]} vs {names[1]}, mean and {'interquartile range' if band == 'iqr' else '±1 sd'}",
                 fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)
