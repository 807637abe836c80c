"""Weight drift of agents=lora runs in the report: per cell, how far the adapters moved each step and
how far apart they are, next to how far apart the agents' answers are (drift.csv of each run).

drift.csv sits in the run directory (a packed grid's: above cells/), one row per step and agent with
population, the swept keys (k, p, and noise, graph where swept) and replica, so a cell's rows are those of
its own values and replicas.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .dims import fmt_value
from .figures import panel_grid
from .plots import save_fig

DRIFT = "drift.csv"
MEASURES = ("update_norm", "adapter_distance", "answer_distance")


def drift_file(cell_dir: Path) -> Path | None:
    for d in (cell_dir, cell_dir.parent.parent):
        if (d / DRIFT).is_file():
            return d / DRIFT
    return None


def same_value(text: str, value) -> bool:
    """A table's cell value (text) against a summary's (number or label): numbers compared as numbers."""
    try:
        return math.isclose(float(text), float(value))
    except (TypeError, ValueError):
        return text == str(value)


def read_drift(path: Path, cell: dict, replicas: set[int]) -> dict[str, np.ndarray]:
    """Rows of the cell (its value of every swept key the file has a column for) and `replicas`
    -> {measure: [runs, T, n]} (runs in replica order)."""
    rows: dict[int, dict[tuple[int, int], dict]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        keys = [key for key in cell if key in (reader.fieldnames or ())]
        for row in reader:
            if int(row["replica"]) not in replicas or not all(same_value(row[key], cell[key]) for key in keys):
                continue
            rows.setdefault(int(row["replica"]), {})[(int(row["t"]), int(row["agent"]))] = row
    out = {}
    for m in MEASURES:
        runs = []
        for r in sorted(rows):
            T = 1 + max(t for t, _ in rows[r])
            n = 1 + max(i for _, i in rows[r])
            runs.append(np.array([[float(rows[r][(t, i)][m]) for i in range(n)] for t in range(T)]))
        out[m] = np.stack(runs) if runs else np.zeros((0, 0, 0))
    return out


def drift_for_groups(groups: dict) -> dict[tuple, dict[str, np.ndarray]]:
    """CellKey -> {measure: [runs, T, n]} for every group with agents=lora runs."""
    found = {}
    for key, cells in groups.items():
        parts: dict[str, list] = {m: [] for m in MEASURES}
        for c in cells:
            path = drift_file(c.dir)
            if path is None or c.k is None:
                continue
            d = read_drift(path, {key: c.value(key) for key in c.swept}, {rec.get("replica") for rec in c.replicas})
            for m in MEASURES:
                if d[m].size:
                    parts[m].append(d[m])
        if parts["update_norm"] and len({a.shape[1:] for a in parts["update_norm"]}) == 1:
            found[key] = {m: np.concatenate(parts[m]) for m in MEASURES}
    return found


def drift_stats(d: dict[str, np.ndarray]) -> dict:
    """Final-step means over runs and agents, and the Pearson correlation over agents and steps between
    an agent's adapter distance and its answer distance (nan where either is constant)."""
    a, b = d["adapter_distance"].ravel(), d["answer_distance"].ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    return {"runs": d["update_norm"].shape[0], "final_update_norm": float(d["update_norm"][:, -1].mean()),
            "mean_update_norm": float(d["update_norm"].mean()),
            "final_adapter_distance": float(d["adapter_distance"][:, -1].mean()),
            "final_answer_distance": float(d["answer_distance"][:, -1].mean()), "distance_correlation": corr}


def drift_markdown(stats: dict, names: tuple[str, ...]) -> list[str]:
    """The drift table of phase.md: stats CellKey -> drift_stats, a column per swept key (names)."""
    lines = ["", "## Weight drift (agents=lora)", "",
             "Update norm: ||B'A' - BA|| of an agent's adapter in one step. Distances: an agent's mean cosine "
             "distance to the others of its population, of the flattened adapters B·A and of the answers' "
             "embeddings. r: their correlation over agents and steps.", "",
             "| " + " | ".join(names) + " | runs | final update norm | mean update norm | final adapter distance "
             "| final answer distance | r |",
             "|---" * (len(names) + 6) + "|"]
    for key, st in stats.items():
        values = " | ".join(fmt_value(key[n]) for n in names)
        lines.append(f"| {values} | {st['runs']} | {st['final_update_norm']:.4g} | {st['mean_update_norm']:.4g} | "
                     f"{st['final_adapter_distance']:.4f} | {st['final_answer_distance']:.4f} | "
                     f"{st['distance_correlation']:.3f} |")
    return lines


def drift_figure(path: Path, found: dict, layout) -> None:
    """Per cell: mean adapter and answer distance over t (left axis), mean update norm (right axis);
    panels laid out by layout (dims.Layout)."""
    fig, axes, where = panel_grid(list(found), layout)
    for key, d in found.items():
        ax = where[key]
        t = np.arange(d["update_norm"].shape[1])
        ax.plot(t, d["adapter_distance"].mean((0, 2)), label="adapter distance", lw=1.5)
        ax.plot(t, d["answer_distance"].mean((0, 2)), label="answer distance", lw=1.5)
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(t, d["update_norm"].mean((0, 2)), color="grey", ls="--", lw=1, label="update norm")
        twin.tick_params(labelsize=6)
        ax.set_title(f"{key.label()} ({d['update_norm'].shape[0]} runs)", fontsize=8)
        if key == next(iter(found)):
            lines = ax.get_lines() + twin.get_lines()
            ax.legend(lines, [ln.get_label() + (" (right)" if ln in twin.get_lines() else "") for ln in lines],
                      fontsize=6, loc="best")
    for ax in axes[-1]:
        ax.set_xlabel("step t")
    fig.suptitle("weight drift (agents=lora)", fontsize=10)
    fig.tight_layout()
    save_fig(fig, path)
