"""The three figures of a run: S(t), E(t), and who is in which silo over time."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402


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


def silo_map(path: Path, labels: dict[int, np.ndarray], names: list[str], title: str, max_panels: int = 4) -> None:
    """labels: replica -> [T, n] label ids; one panel per replica (first max_panels): agent x step."""
    shown = list(labels.items())[:max_panels]
    fig, axes = plt.subplots(len(shown), 1, figsize=(8.5, 2.2 + 1.6 * len(shown)), squeeze=False)
    for ax, (replica, lab) in zip(axes[:, 0], shown):
        present = sorted(set(np.unique(lab).tolist()))
        index = {v: i for i, v in enumerate(present)}
        img = np.vectorize(index.get)(lab.T)  # [n, T]
        cmap = plt.get_cmap("tab20", max(len(present), 1))
        ax.imshow(img, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=len(present) - 0.5)
        ax.set_ylabel(f"agent (replica {replica})")
        # legend: the silos alive at the last step, by size
        final, sizes = np.unique(lab[-1], return_counts=True)
        handles = [Patch(color=cmap(index[v]), label=f"{names[v] if 0 <= v < len(names) else 'unlabeled'} ({c})")
                   for v, c in sorted(zip(final.tolist(), sizes.tolist()), key=lambda vc: -vc[1])[:8]]
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="final silos",
                  title_fontsize=7)
    axes[-1, 0].set_xlabel("step t")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(directory: Path, stability, entropy, labels, names, title: str) -> None:
    _series(directory / "stability.png", stability, "stability S(t)", title)
    _series(directory / "entropy.png", entropy, "entropy E(t) [nats]", title)
    silo_map(directory / "silos.png", labels, names, title)
