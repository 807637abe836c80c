"""A calibration grid beside the authors' published table (arXiv 2412.06834, LLaMA-2-7B-Chat, 8 runs per
cell, n=30, T=80): mean final silos, E(0), final E, S at the last step, and the step of the last label
change, per (k, p) cell of a finished run of `python -m tensorsim trial=calibration`.

    python bench/calibration.py outputs/<calibration run> [--out bench/results/calibration_cpu-2core]

Prints a markdown table, then one JSON line; with --out writes <out>.md and <out>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import host  # noqa: E402
from tensorsim.analysis.runs import find_cells, group_cells, iter_runs  # noqa: E402

# The authors' figures (paper's table of mean final silos, 8 runs per cell; and its text)
PAPER_SILOS = {(1, 0.2): 7.5, (5, 0.2): 2.0, (15, 0.2): 1, (25, 0.2): 1,
               (1, 0.5): 8.75, (5, 0.5): 2.1, (15, 0.5): 1, (25, 0.5): 1,
               (1, 0.7): 7.75, (5, 0.7): 2.0, (15, 0.7): 1, (25, 0.7): 1}
PAPER_E0 = 3.37
PAPER_FINAL_E = {1: "1.9-2.0", 5: "0.54-0.65", 15: "0", 25: "0"}
PAPER_LAST_CHANGE_K25 = {0.2: "11-29", 0.5: "19-39", 0.7: "25-58"}


def cell_rows(root: Path) -> list[dict]:
    notes: list[str] = []
    cells = find_cells(root, notes)
    if not cells:
        sys.exit(f"{root}: no complete run found ({'; '.join(notes) or 'no summary.json'})")
    rows = []
    for key, cs in group_cells(cells).items():
        k, p = key.k, key.p
        runs = list(iter_runs(cs))
        finals = [int(rec["final_n_silos"]) for _, rec, *_ in runs]
        last = [rec.get("last_change_step") for _, rec, *_ in runs]
        rows.append({
            "k": k, "p": p, "runs": len(runs),
            "final_silos": finals, "final_silos_mean": float(np.mean(finals)),
            "paper_final_silos_mean": PAPER_SILOS.get((k, p)),
            "E0": [round(float(E[0]), 3) for *_, E, _ in runs],
            "final_E": [round(float(E[-1]), 3) for *_, E, _ in runs],
            "paper_final_E": PAPER_FINAL_E.get(k),
            "S_last": [round(float(S[-1]), 3) for _, _, S, _, _ in runs],
            "last_change_step": last,
            "paper_last_change_step": PAPER_LAST_CHANGE_K25.get(p) if k == 25 else None,
            "final_unlabeled": [rec.get("final_unlabeled") for _, rec, *_ in runs],
        })
    return rows


def _list(values) -> str:
    return ", ".join("-" if v is None else f"{v:g}" for v in values)


def markdown(rows: list[dict]) -> str:
    lines = ["| k | p | runs | final silos (each run) | mean | paper mean | E(0) | final E | paper final E | "
             "S(T-1) | last change step | paper (k=25) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['p']:g} | {r['runs']} | {_list(r['final_silos'])} | {r['final_silos_mean']:.2f} | "
                     f"{'' if r['paper_final_silos_mean'] is None else r['paper_final_silos_mean']:} | "
                     f"{_list(r['E0'])} | {_list(r['final_E'])} | {r['paper_final_E'] or ''} | {_list(r['S_last'])} | "
                     f"{_list(r['last_change_step'])} | {r['paper_last_change_step'] or ''} |")
    return "\n".join(lines) + f"\n\nPaper: E(0) = {PAPER_E0} and S(79) = 1 in every run.\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished calibration run directory")
    ap.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    args = ap.parse_args()
    rows = cell_rows(args.run)
    summary = json.loads((args.run / "summary.json").read_text())
    result = {"bench": "calibration", "run": str(args.run), "models": summary.get("models"),
              "device": summary.get("device"), "wall_time_s": summary.get("wall_time_s"),
              "protocol": summary.get("protocol"), "cells": rows, "host": host(torch.float32)}
    md = markdown(rows)
    print(md)
    print(json.dumps(result))
    if args.out:
        args.out.with_suffix(".md").write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
