"""The report's split by agent type (trial.types): final silos, entropy and stability among each type's
agents, and how much of each type ends in the population's largest silo.

A run's types are read from agents.csv / agents.parquet (column `type`, constant over a run: the rows of
t = 0). Runs without the column, or with the one type `all`, have nothing to split.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..outputs import parquet_batches, table_path
from .runs import read_agent_labels

TYPE_STATS = ["runs", "agents", "final_silos", "final_entropy", "mean_stability_window", "share_in_largest_silo"]


def type_columns(names: tuple[str, ...]) -> list[str]:
    """types.csv's header: one column per swept key, then the type and TYPE_STATS."""
    return list(names) + ["type"] + TYPE_STATS


def read_agent_types(path: Path) -> dict[int, dict[int, str]]:
    """agents table -> replica -> agent -> type name (from the rows of t = 0); {} without a type column."""
    out: dict[int, dict[int, str]] = {}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if "type" not in pq.ParquetFile(path).schema_arrow.names:
            return {}
        for batch in parquet_batches(path, ["replica", "t", "agent", "type"]):
            rep, t, agent = (batch.column(i).to_numpy() for i in range(3))
            names = batch.column(3).to_pylist()
            for i in np.flatnonzero(t == 0).tolist():
                out.setdefault(int(rep[i]), {})[int(agent[i])] = names[i]
        return out
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if "type" not in (reader.fieldnames or []):
            return {}
        for row in reader:
            if row["t"] == "0":
                out.setdefault(int(row["replica"]), {})[int(row["agent"])] = row["type"]
    return out


def entropy(labels: np.ndarray) -> float:
    """-sum pi ln pi over the labels' groups (unlabeled, -1, a group of its own), in nats."""
    if labels.size == 0:
        return math.nan
    _, counts = np.unique(labels, return_counts=True)
    pi = counts / counts.sum()
    return float(-(pi * np.log(pi)).sum())


def type_run_values(labels: np.ndarray, members: np.ndarray, window: int) -> dict:
    """One run's values for the agents `members` of one type. labels: [T, n]; members: [n] bool."""
    T = labels.shape[0]
    own = labels[:, members]  # [T, n_type]
    final = labels[-1]
    values, counts = np.unique(final, return_counts=True)
    largest = values[np.argmax(counts)]  # ties to the lower label, as np.unique sorts
    steps = range(max(1, T - window), T)
    stability = [float(np.mean(own[t] == own[t - 1])) for t in steps]
    return {"agents": int(members.sum()), "final_silos": len(np.unique(own[-1])),
            "final_entropy": entropy(own[-1]), "mean_stability_window": float(np.mean(stability)) if stability else math.nan,
            "share_in_largest_silo": float(np.mean(own[-1] == largest))}


def type_stats(groups: dict, window: int) -> list[dict]:
    """Per cell (CellKey) and type, the mean over runs of type_run_values, with the cell's swept values;
    [] when no run has two types."""
    rows = []
    for key, cells in groups.items():
        per_type: dict[str, list[dict]] = {}
        for c in cells:
            path = table_path(c.dir, "agents")
            if path is None:
                continue
            types = read_agent_types(path)
            if not types:
                continue
            labels = read_agent_labels(path, list(types))
            for r, lab in labels.items():
                names = np.array([types[r].get(a, "") for a in range(lab.shape[1])])
                for name in sorted(set(names.tolist())):
                    per_type.setdefault(name, []).append(type_run_values(lab, names == name, window))
        if set(per_type) <= {"all"}:
            continue
        for name, runs in per_type.items():
            rows.append({**dict(key.items), "type": name, "runs": len(runs),
                         **{m: float(np.mean([r[m] for r in runs])) for m in TYPE_STATS[1:]}})
    return rows
