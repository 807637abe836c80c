"""compare's figures: A, B and A − B heatmaps over two swept keys (dims.Layout) with differing cells boxed,
one row of them per metric and value of the other keys that vary, and S(t) / E(t) bands of both sets
overlaid per cell."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from .dims import Layout, axis_title, fmt_value, key_values
from .figures import mean_band, panel_grid
from .plots import plt, save_fig
from .runs import iter_runs

SIDE_COLOURS = ("tab:blue", "tab:orange")


def _grid(rows: list[dict], field: str, layout: Layout, ks: list, ps: list) -> np.ndarray:
    """[len(ks), len(ps)] of rows' field over layout.rows x layout.cols (one column for a strip)."""
    grid = np.full((len(ks), len(ps)), np.nan)
    for r in rows:
        grid[ks.index(r[layout.rows]), ps.index(r[layout.cols]) if layout.cols else 0] = r[field]
    return grid


def _draw(ax, grid: np.ndarray, ks, ps, cmap: str, vmin: float, vmax: float, flags=None):
    im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(ps)), [fmt_value(p) if p is not None else "" for p in ps])
    ax.set_yticks(range(len(ks)), [fmt_value(k) for k in ks])
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


def difference_heatmaps(path: Path, rows: list[dict], metrics: dict[str, str], names: tuple[str, str],
                        layout: Layout) -> None:
    """One row of panels per metric (metrics: name -> title) and value combination of layout.panels:
    A's mean, B's mean (one colour scale), A − B (diverging, centred at 0)."""
    values = key_values([r["cell"] for r in rows])
    ks = values[layout.rows]
    ps = values[layout.cols] if layout.cols else [None]
    combos = list(itertools.product(*(values[n] for n in layout.panels)))
    lines = [(m, combo) for m in metrics for combo in combos]
    w = 1.0 + 0.7 * len(ps)
    fig, axes = plt.subplots(len(lines), 3, figsize=(3 * w + 2.5, 0.9 + len(lines) * (0.9 + 0.35 * len(ks))),
                             squeeze=False, layout="constrained")
    for row_axes, (m, combo) in zip(axes, lines):
        mine = [r for r in rows if r["metric"] == m and all(r[n] == v for n, v in zip(layout.panels, combo))]
        where = "".join(f", {n}={fmt_value(v)}" for n, v in zip(layout.panels, combo))
        a, b, d = (_grid(mine, f, layout, ks, ps) for f in ("mean_a", "mean_b", "diff"))
        flags = _grid([dict(r, differs=float(r["differs"])) for r in mine], "differs", layout, ks, ps) == 1
        both = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
        lo, hi = (both.min(), both.max()) if both.size else (0.0, 1.0)
        span = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.0
        span = span if span > 0 and math.isfinite(span) else 1.0
        for ax, grid, title in ((row_axes[0], a, names[0]), (row_axes[1], b, names[1])):
            im = _draw(ax, grid, ks, ps, "viridis", lo, hi)
            ax.set_title(f"{metrics[m]}{where}: {title}", fontsize=8)
        fig.colorbar(im, ax=list(row_axes[:2]), fraction=0.04)
        im = _draw(row_axes[2], d, ks, ps, "RdBu_r", -span, span, flags)
        row_axes[2].set_title(f"{names[0]} − {names[1]}{where} (boxed *: differs)", fontsize=8)
        fig.colorbar(im, ax=row_axes[2], fraction=0.08)
        row_axes[0].set_ylabel(axis_title(layout.rows))
    for ax in axes[-1]:
        ax.set_xlabel(axis_title(layout.cols) if layout.cols else "")
    save_fig(fig, path)


def _band(ax, series: list[np.ndarray], band: str, colour: str, label: str) -> None:
    t, mean, lo, hi = mean_band(series, band)
    ax.fill_between(t, lo, hi, alpha=0.2, lw=0, color=colour)
    ax.plot(t, mean, lw=1.4, color=colour, label=f"{label} ({len(series)} runs)")


def overlaid_curves(path: Path, keys: list, A: dict, B: dict, which: str, band: str,
                    names: tuple[str, str], differs: set, layout: Layout) -> None:
    """S(t) or E(t) per common cell: each set's mean and band, in its own colour; the titles of the
    cells in differs say so."""
    fig, axes, where = panel_grid(keys, layout)
    for key in keys:
        ax = where[key]
        for groups, colour, name in ((A, SIDE_COLOURS[0], names[0]), (B, SIDE_COLOURS[1], names[1])):
            series = [S if which == "S" else E for _, _, S, E, _ in iter_runs(groups[key])]
            if series:
                _band(ax, series, band, colour, name)
        ax.set_title(key.label() + (": differs" if key in differs else ""), fontsize=8,
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
