"""The three figures of a run: S(t), E(t), and who is in which silo over time."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..outputs import tmp_path  # noqa: E402


def save_fig(fig, path: Path) -> None:
    """Write the figure to a temporary file, then rename: a reader never sees half a PNG."""
    tmp = tmp_path(path)
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    os.replace(tmp, path)

def _series(path: Path, series: dict[int, list[float]], ylabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    arr = []
    for replica, ys in series.items():
        xs = [t for t, y in enumerate(ys) if y is not None]
        ax.plot(xs, [ys[t] for t in xs], lw=0.8, alpha=0.5 if len(series) > 1 else 1.0, label=f"replica {replica}")
        arr.append([np.nan if y is None else y for y in ys])
    if len(series) > 1:
        with warnings.catch_warnings():  # S(0) is undefined in every replica
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(np.array(arr, dtype=float), axis=0)
        ax.plot(mean, color="black", lw=2, label="mean")
    ax.set_xlabel("step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _is_grey(rgba) -> bool:
    return rgba[0] == rgba[1] == rgba[2]


# Distinct colours for silos that matter: tab10, then tab20's light tints, greys left out (greys shade the
# labels that only pass through); past those, golden-ratio hues (saturated: never grey, never repeated).
_PALETTE = [c for c in list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20").colors[1::2])
            if not _is_grey(c)]
_GREYS = [(g, g, g) for g in (0.55, 0.82, 0.68, 0.9, 0.62, 0.75)]


def distinct_colours(count: int) -> list[tuple]:
    """count pairwise distinct RGBA colours, none of them grey."""
    out = [matplotlib.colors.to_rgba(c) for c in _PALETTE[:count]]
    i = 0
    while len(out) < count:
        hue = (i * 0.6180339887) % 1.0
        rgb = matplotlib.colors.hsv_to_rgb((hue, 0.8 - 0.3 * (i % 2), 0.9 - 0.3 * ((i // 2) % 2)))
        rgba = tuple(float(v) for v in rgb) + (1.0,)
        if rgba not in out and not _is_grey(rgba):
            out.append(rgba)
        i += 1
    return out


def grey_shade(i: int) -> tuple:
    return _GREYS[i % len(_GREYS)] + (1.0,)


def silo_colours(labels: np.ndarray) -> dict[int, tuple]:
    """labels [T, n] -> colour of every label present. The final silos (labels at the last step), largest
    first, get pairwise distinct colours; labels that only pass through get greys, which no final silo
    gets, so the legend of final silos is never ambiguous."""
    final, sizes = np.unique(labels[-1], return_counts=True)
    ranked = [int(v) for _, v in sorted(zip(-sizes, final.tolist()))]
    colours = dict(zip(ranked, distinct_colours(len(ranked))))
    transient = [int(v) for v in np.unique(labels) if int(v) not in colours]
    colours.update({v: grey_shade(i) for i, v in enumerate(transient)})
    return colours


def silo_figure(labels: dict[int, np.ndarray], names: list[str], title: str, max_panels: int = 4):
    """labels: replica -> [T, n] label ids; one panel per replica (first max_panels): agent x step."""
    shown = list(labels.items())[:max_panels]
    fig, axes = plt.subplots(len(shown), 1, figsize=(8.5, 2.2 + 1.6 * len(shown)), squeeze=False)
    for ax, (replica, lab) in zip(axes[:, 0], shown):
        colours = silo_colours(lab)
        present = sorted(colours)
        index = {v: i for i, v in enumerate(present)}
        img = np.vectorize(index.get)(lab.T)  # [n, T]
        cmap = ListedColormap([colours[v] for v in present])
        ax.imshow(img, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=len(present) - 0.5)
        ax.set_ylabel(f"agent (replica {replica})")
        # legend: the silos alive at the last step, by size
        final, sizes = np.unique(lab[-1], return_counts=True)
        handles = [Patch(color=colours[v], label=f"{names[v] if 0 <= v < len(names) else 'unlabeled'} ({c})")
                   for v, c in sorted(zip(final.tolist(), sizes.tolist()), key=lambda vc: -vc[1])[:8]]
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="final silos",
                  title_fontsize=7)
    axes[-1, 0].set_xlabel("step t")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig


def silo_map(path: Path, labels: dict[int, np.ndarray], names: list[str], title: str, max_panels: int = 4) -> None:
    fig = silo_figure(labels, names, title, max_panels)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(directory: Path, stability, entropy, labels, names, title: str) -> None:
    _series(directory / "stability.png", stability, "stability S(t)", title)
    _series(directory / "entropy.png", entropy, "entropy E(t) [nats]", title)
    silo_map(directory / "silos.png", labels, names, title)
