"""Run outputs, written so that nothing half-written looks complete.

Per cell directory (the run directory itself for a single (k, p) cell, cells/k{K}_p{P}/ in a grid):
  metrics.csv       replica, t, stability (empty at t=0), entropy, n_silos   [+ k, p in a grid]
  agents.csv        replica, t, agent, label, label_name, partner, mirrored  [+ k, p in a grid]
  transcript.jsonl  {replica, t, agent, context, response}                   (LLM agents)
  summary.json      config, models, timings and per-replica final silos and patterns
  stability.png, entropy.png, silos.png
Tables stream into *.partial files that are renamed when the run ends; summary.json is written last
(temporary file + rename) and is what marks a directory as complete.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .patterns import label_name
from .populations import Populations

SUMMARY = "summary.json"
TABLES = ("metrics.csv", "agents.csv", "transcript.jsonl")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def cell_dirname(k: int, p: float) -> str:
    return f"k{k}_p{p:g}"


class CellWriter:
    """Streams one (k, p) cell's tables; its populations are the rows `members` of the batch."""

    def __init__(self, directory: Path, members: list[int], replicas: list[int], names: list[str],
                 kp: tuple[int, float] | None, transcript: bool, agents: bool = True,
                 offsets: dict[str, int] | None = None):
        """offsets: when resuming, the byte size of each table at the checkpoint; later rows are cut."""
        self.dir = directory
        self.offsets = offsets
        self.dir.mkdir(parents=True, exist_ok=True)
        self.members, self.replicas, self.names, self.kp = members, replicas, names, kp
        extra = ["k", "p"] if kp else []
        self._files = {}
        self._metrics = self._open("metrics.csv", ["replica", "t", "stability", "entropy", "n_silos"] + extra)
        self._agents = self._open("agents.csv", ["replica", "t", "agent", "label", "label_name", "partner",
                                                 "mirrored"] + extra) if agents else None
        self._transcript = self._open_raw("transcript.jsonl") if transcript else None

    def _open_raw(self, name):
        path = self.dir / (name + ".partial")
        if self.offsets is None:
            f = open(path, "w", encoding="utf-8", newline="")
        else:
            f = open(path, "r+", encoding="utf-8", newline="")
            f.truncate(self.offsets[name])  # rows written after the checkpoint are redone
            f.seek(self.offsets[name])
        self._files[name] = f
        return f

    def _open(self, name, header):
        w = csv.writer(self._open_raw(name))
        if self.offsets is None:
            w.writerow(header)
        return w

    def tell(self) -> dict[str, int]:
        """Byte size of every table, after a flush: what a checkpoint records."""
        self.flush()
        return {name: f.tell() for name, f in self._files.items()}

    def write_step(self, t: int, labels, partner, mirrored, stability, entropy, n_silos, contexts, responses, n):
        extra = [self.kp[0], self.kp[1]] if self.kp else []
        for b, r in zip(self.members, self.replicas):
            s = "" if stability is None else f"{float(stability[b]):.6f}"
            self._metrics.writerow([r, t, s, f"{float(entropy[b]):.6f}", int(n_silos[b])] + extra)
            if self._agents is not None:
                lab, par, mir = labels[b].tolist(), partner[b].tolist(), mirrored[b].tolist()
                self._agents.writerows([r, t, i, lab[i], label_name(lab[i], self.names), par[i], int(mir[i])]
                                       + extra for i in range(n))
            if self._transcript is not None and responses is not None:
                base = b * n
                self._transcript.writelines(
                    json.dumps({"replica": r, "t": t, "agent": i, "context": contexts[base + i],
                                "response": responses[base + i]}, ensure_ascii=False) + "\n" for i in range(n))

    def flush(self):
        for f in self._files.values():
            f.flush()

    def close(self, summary: dict) -> None:
        """Rename the tables into place, then write summary.json last."""
        for name, f in self._files.items():
            f.close()
            os.replace(self.dir / (name + ".partial"), self.dir / name)
        write_json_atomic(self.dir / SUMMARY, summary)


def make_cell_writers(run_dir: Path, pops: Populations, names: list[str], transcript: bool,
                      agents: bool = True, offsets: list[dict] | None = None) -> list[CellWriter]:
    grid = len(pops.cells) > 1
    writers = []
    for c, (k, p) in enumerate(pops.cells):
        members = (pops.cell == c).nonzero().flatten().tolist()
        replicas = pops.replica[members].tolist()
        directory = run_dir / "cells" / cell_dirname(k, p) if grid else run_dir
        writers.append(CellWriter(directory, members, replicas, names, (k, p) if grid else None, transcript, agents,
                                   offsets[c] if offsets else None))
    return writers


def refuse_completed(run_dir: Path, overwrite: bool) -> None:
    from .errors import UserError

    if is_complete(run_dir) and not overwrite:
        raise UserError(f"run directory {run_dir} already holds a completed run; choose another hydra.run.dir "
                        f"or set overwrite=true")
    if overwrite and is_complete(run_dir):
        (run_dir / SUMMARY).unlink()
