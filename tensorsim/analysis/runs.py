"""Run sets on disk: find the complete runs under a directory (a run, a packed grid, a multirun), read
their metrics and agent labels, and pool replicas of the same cell (the same values of every swept key:
k, p, noise, graph, ...) into per-cell statistics."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.patterns import PATTERNS, last_change_step
from ..errors import UserError
from ..outputs import SUMMARY, parquet_batches, table_path
from .dims import BASE_KEYS, CellKey, norm_value, ordered_keys, sort_keys

RUN_MARKERS = ("metrics.csv", "metrics.csv.partial", "agents.csv.partial", "transcript.jsonl.partial", "metrics.parquet",
               "metrics.parquet.partial", "agents.parquet.partial", "transcript.parquet.partial", ".hydra")

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
    def swept(self) -> tuple[str, ...]:
        """The keys this cell's run was swept over: the summary's cell_keys, else (runs written before
        summaries named them) k, p and noise where the summary has it."""
        keys = self.summary.get("cell_keys")
        if isinstance(keys, list) and keys and all(isinstance(n, str) for n in keys):
            return tuple(keys)
        return BASE_KEYS + (("noise",) if "noise" in self.summary else ())

    def value(self, name: str):
        """This cell's value of a swept key: its summary's, else (a run that did not sweep it) its config's
        trial.<name> when that is one number or label, else None."""
        if name in self.summary:
            return self.summary[name]
        v = ((self.summary.get("config") or {}).get("trial") or {}).get(name)
        return v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else None

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

def swept_keys(cells: list[Cell]) -> tuple[str, ...]:
    """Every key any of the cells was swept over: k, p first, then the others as first seen."""
    return ordered_keys(c.swept for c in cells)


def cell_key(cell: Cell, names: tuple[str, ...]) -> CellKey:
    return CellKey(tuple((n, norm_value(cell.value(n))) for n in names))


def group_cells(cells: list[Cell], names: tuple[str, ...] | None = None) -> dict[CellKey, list[Cell]]:
    """Cells pooled by their values of every swept key (names: those keys, default swept_keys(cells)),
    in table order (dims.sort_keys)."""
    names = names or swept_keys(cells)
    groups: dict[CellKey, list[Cell]] = {}
    for c in cells:
        groups.setdefault(cell_key(c, names), []).append(c)
    return {key: groups[key] for key in sort_keys(list(groups))}


def iter_runs(cells: list[Cell]):
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


def run_values(cells: list[Cell], window: int) -> dict[str, list]:
    """Per run of the cells: final silos, pattern, step of the last label change, mean S over the final
    window, final entropy; each a list in run order (what phase tables average and compare tests)."""
    out = {"final_silos": [], "pattern": [], "last_change": [], "window_stability": [], "final_entropy": []}
    for _, rec, S, E, silos in iter_runs(cells):
        out["final_silos"].append(int(rec.get("final_n_silos", silos[-1])))
        out["pattern"].append(rec.get("pattern"))
        lc = rec.get("last_change_step")
        out["last_change"].append(int(lc) if lc is not None else last_change_step([None] + S[1:].tolist()))
        out["window_stability"].append(window_mean_stability(S, window))
        out["final_entropy"].append(float(E[-1]))
    return out


def cell_stats(cells: list[Cell], window: int) -> dict:
    v = run_values(cells, window)
    finals, pats = v["final_silos"], v["pattern"]
    n = len(finals)
    stats = {"runs": n,
             "final_silos_mean": float(np.mean(finals)) if n else math.nan,
             "final_silos_sd": float(np.std(finals, ddof=1)) if n > 1 else math.nan}
    for pat in PATTERNS:
        stats[f"share_{pat}"] = (sum(x == pat for x in pats) / n) if n else math.nan
    stats["median_last_change_step"] = float(np.median(v["last_change"])) if n else math.nan
    stats["mean_stability_window"] = float(np.mean(v["window_stability"])) if n else math.nan
    stats["mean_final_entropy"] = float(np.mean(v["final_entropy"])) if n else math.nan
    return stats


PHASE_STATS = ["runs", "final_silos_mean", "final_silos_sd", "share_single", "share_stable", "share_unstable",
               "share_decaying", "median_last_change_step", "mean_stability_window", "mean_final_entropy"]


def phase_columns(names: tuple[str, ...]) -> list[str]:
    """phase.csv's header: one column per swept key (k, p first), then PHASE_STATS."""
    return list(names) + PHASE_STATS


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

