"""`python -m tensorsim.analyze FILES... --out DIR`: label and measure transcripts produced elsewhere.

Input formats (tensorsim/analysis/transcripts.py; one format per run): wide CSV (a header row, then one
row per step: the step index first, then one column per agent; a cell is plain text or a Python list
literal of one string; several files of one run are concatenated in order and re-indexed 0..T-1), or
tensorsim's transcript.jsonl / transcript.parquet.

One run: FILES are its parts in order; `--set k=5 --set p=0.5 --set replica=3` gives its parameters,
which go into summary.json as a simulated single run's do. Many runs: `--pattern 'output{p10}_{k}_{replica}'`
reads each run's parameters from its file names (tensorsim/analysis/imported.py; FILES may be
directories and globs, `_2nd` parts are joined to their run), and DIR becomes a grid as a packed
simulation writes it: cells/k{K}_p{P}/ with the k, p columns, one summary.json per cell with its
replicas, and a top-level summary.json listing the cells, so `python -m tensorsim.report DIR` draws the
phase diagram. Every input is read and labelled before anything is written.

Every answer is labelled (name labeler by default: the earliest known flower name in the text), every
metric and pattern is computed as in a simulation, and each cell directory receives what a simulation
writes: metrics.csv, agents.csv (partner and mirrored empty), transcript.jsonl, summary.json,
stability.png, entropy.png, silos.png; with --embed also distance.csv and distance.png (mean pairwise
distance between the agents' answer embeddings over t) and perspective.png (classical MDS of the
embeddings). Files are staged and renamed into place; summary.json comes last and marks DIR complete.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import metrics
from ..core.patterns import PatternRules, label_name, last_change_step, run_pattern, silo_patterns
from ..errors import UserError
from ..outputs import SUMMARY, cell_dirname, is_complete, write_json_atomic
from .imported import ImportedRun, compile_pattern, expand_inputs, group_runs, parse_sets
from .transcripts import read_inputs

def read_names(path: Path | None) -> tuple[list[str], str]:
    if path is None:
        from ..knowledge import load_kb

        kb = load_kb()
        return kb.labels, f"packaged knowledge base {kb.name}"
    if not path.is_file():
        raise UserError(f"--names {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"--names {path}: not UTF-8 text ({e.reason})") from None
    names = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not names:
        raise UserError(f"--names {path}: no names (one name per line)")
    seen = set()
    for s in names:
        if s.lower() in seen:
            raise UserError(f"--names {path}: duplicate name {s!r}")
        seen.add(s.lower())
    return names, str(path)


# ----------------------------------------------------------------------------------------- measuring

def measure(labels: torch.Tensor, num_labels: int) -> tuple[list, list[float], list[int]]:
    """labels [T, n] -> (S over t with None at t=0, E, n_silos) as in a simulation."""
    E = metrics.entropy(labels, num_labels)
    silos = metrics.n_silos(labels, num_labels)
    S = [None] + metrics.stability(labels[:-1], labels[1:]).tolist()
    return S, [float(e) + 0.0 for e in E.tolist()], [int(x) for x in silos.tolist()]


def _f6(x) -> str:
    return "" if x is None else f"{x + 0.0:.6f}"


@dataclass
class Options:
    """How answers are labelled and measured; the same for every run of one command."""
    names_file: Path | None = None
    window: int = 20
    rules_kw: dict = field(default_factory=dict)
    labeler: str = "name"
    embed: bool = False
    embedder_file: Path | None = None
    device: str = "auto"
    mds_steps: str = "first,middle,last"
    overwrite: bool = False


def check_options(out: Path, opts: Options) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if is_complete(out) and not opts.overwrite:
        raise UserError(f"--out {out} already holds a completed analysis (summary.json); choose another "
                        f"directory or pass --overwrite")
    if opts.window < 1:
        raise UserError(f"--window={opts.window} is not allowed: an integer >= 1")
    if opts.labeler == "centroid" and not opts.embed:
        raise UserError("--labeler centroid needs --embed (it labels answers by their embeddings)")
    if opts.labeler == "centroid" and opts.names_file is not None:
        raise UserError("--names applies to --labeler name only (the centroid labeler uses the knowledge base's labels)")
    check_rules(PatternRules(window=opts.window, **opts.rules_kw))  # before any input is read


def check_rules(rules: PatternRules) -> None:
    if not 0 <= rules.stable_min_stability <= 1:
        raise UserError(f"--stable-min-stability={rules.stable_min_stability} is not allowed: a number in [0, 1]")
    if rules.decay_min_silo_drop < 1:
        raise UserError(f"--decay-min-silo-drop={rules.decay_min_silo_drop} is not allowed: an integer >= 1")
    if not rules.decay_min_entropy_drop > 0:
        raise UserError(f"--decay-min-entropy-drop={rules.decay_min_entropy_drop} is not allowed: a number > 0")


def make_rules(opts: Options, T: int, notes: list[str]) -> PatternRules:
    """The pattern rules, the window capped to the T steps of the shortest run."""
    window = opts.window
    if window > T:
        notes.append(f"--window={window} is longer than the {T} steps: the window is all {T} steps")
        window = T
    return PatternRules(window=window, **opts.rules_kw)


class Labelling:
    """The label names and, when asked for, the embedder: built once, used on every run."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.names, self.source = read_names(opts.names_file)
        self.embedder = self.embedder_cfg = None
        if opts.embed:
            from .perspective import default_embedder_cfg, make_embedder

            if opts.embedder_file is not None:
                from omegaconf import OmegaConf

                if not opts.embedder_file.is_file():
                    raise UserError(f"--embedder {opts.embedder_file}: no such file")
                self.embedder_cfg = OmegaConf.to_container(OmegaConf.load(opts.embedder_file), resolve=True)
            else:
                self.embedder_cfg = default_embedder_cfg()
            self.embedder = make_embedder(self.embedder_cfg, opts.device)
        if opts.labeler == "name":
            from ..core.labels import NameLabeler

            self.label_text = NameLabeler(self.names)
        else:
            from ..core.labels import CentroidLabeler
            from ..knowledge import load_kb

            kb = load_kb()
            self.names, self.source = kb.labels, f"centroids of the packaged knowledge base {kb.name}"
            ref = self.embedder.responses([row[kb.topic_slot] for row in kb.answers]).cpu()
            self.label_vectors = CentroidLabeler(ref, torch.tensor(kb.agent_labels), len(kb.labels))

    def run(self, rows: list[list[str]]) -> tuple[torch.Tensor, np.ndarray | None]:
        """answers [T][n] -> (labels [T, n], embeddings [T, n, d] or None)."""
        T, n = len(rows), len(rows[0])
        flat = [a for row in rows for a in row]
        emb = None
        if self.embedder is not None:
            emb = self.embedder.responses(flat).cpu().numpy().reshape(T, n, -1)  # each distinct text once
        if self.opts.labeler == "name":
            return self.label_text(flat).reshape(T, n), emb
        return self.label_vectors(torch.from_numpy(emb)), emb


@dataclass
class CellData:
    """The runs of one (k, p) cell: replica -> answers [T][n], then labels and embeddings."""
    fmt: str
    agent_names: list[str]
    files: list[Path]
    run_files: dict = field(default_factory=dict)  # replica -> its files in order
    answers: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    emb: dict = field(default_factory=dict)


def read_cell(runs: list[tuple[int | None, list[Path]]], notes: list[str]) -> CellData:
    """runs: (replica or None to keep the file's own, files in order). Runs of a cell share n and T."""
    cell = None
    for replica, files in runs:
        fmt, agent_names, answers = read_inputs(files, notes)
        if replica is not None:
            if len(answers) > 1:
                raise UserError(f"{files[0]}: holds replicas {', '.join(map(str, answers))}; a run given a "
                                f"replica number by --set or --pattern must hold one")
            answers = {replica: next(iter(answers.values()))}
        if cell is None:
            cell = CellData(fmt, agent_names, list(files))
        else:
            cell.files += files
            cell.fmt = cell.fmt if fmt == cell.fmt else "mixed"
            first = next(iter(cell.answers.values()))
            other = next(iter(answers.values()))
            if (len(other[0]), len(other)) != (len(first[0]), len(first)):
                raise UserError(f"{files[0]}: {len(other[0])} agents x {len(other)} steps, but {cell.files[0]} has "
                                f"{len(first[0])} x {len(first)}: runs of one (k, p) cell must match")
        for r, rows in answers.items():
            cell.answers[r], cell.run_files[r] = rows, [str(f) for f in files]
    return cell


def label_cell(cell: CellData, lab: Labelling) -> CellData:
    """Labels (and embeddings, with --embed) of every run of the cell."""
    for r, rows in cell.answers.items():
        cell.labels[r], emb = lab.run(rows)
        if emb is not None:
            cell.emb[r] = emb
    return cell


# ------------------------------------------------------------------------------------------ writing

def write_cell(directory: Path, cell: CellData, lab: Labelling, rules: PatternRules, kp: tuple | None,
               title: str, mds_steps: str) -> list[dict]:
    """A cell's tables and plots, staged and renamed into directory -> its replica records.
    kp: (k, p) to write as columns, as a simulated grid's cells do; None for a single run."""
    names, L = lab.names, len(lab.names)
    extra = list(kp) if kp else []
    directory.mkdir(parents=True, exist_ok=True)
    if is_complete(directory):
        (directory / SUMMARY).unlink()  # from here on the directory reads as incomplete
    for stale in ("distance.csv", "distance.png", "perspective.png"):
        (directory / stale).unlink(missing_ok=True)
    stage = Path(tempfile.mkdtemp(dir=directory, prefix=".analyze-"))
    try:
        replicas, stab, ent, labs = [], {}, {}, {}
        with open(stage / "metrics.csv", "w", encoding="utf-8", newline="") as fm, \
                open(stage / "agents.csv", "w", encoding="utf-8", newline="") as fa, \
                open(stage / "transcript.jsonl", "w", encoding="utf-8") as ft:
            wm, wa = csv.writer(fm), csv.writer(fa)
            cols = ["k", "p"] if kp else []
            wm.writerow(["replica", "t", "stability", "entropy", "n_silos"] + cols)
            wa.writerow(["replica", "t", "agent", "label", "label_name", "partner", "mirrored"] + cols)
            for r, rows in cell.answers.items():
                labels = cell.labels[r]
                S, E, silos = measure(labels, L)
                lab_list = labels.tolist()
                n = len(rows[0])
                for t in range(len(rows)):
                    wm.writerow([r, t, _f6(S[t]), _f6(E[t]), silos[t]] + extra)
                    wa.writerows([r, t, i, lab_list[t][i], label_name(lab_list[t][i], names), "", ""] + extra
                                 for i in range(n))
                    ft.writelines(json.dumps({"replica": r, "t": t, "agent": i, "agent_name": cell.agent_names[i],
                                              "context": None, "response": rows[t][i]}, ensure_ascii=False)
                                  + "\n" for i in range(n))
                replicas.append({"replica": r, "files": cell.run_files[r], "seed": None, "final_n_silos": silos[-1],
                                 "pattern": run_pattern(S, silos, E, rules), "last_change_step": last_change_step(S),
                                 "final_entropy": E[-1], "silos": silo_patterns(labels, rules, names)})
                stab[r], ent[r], labs[r] = S, E, labels.numpy()

        from .plots import write_plots

        write_plots(stage, stab, ent, labs, names, title)
        if cell.emb:
            _distance_outputs(stage, cell.emb, labs, names, title, mds_steps, len(next(iter(cell.answers.values()))))
        for path in sorted(stage.iterdir()):
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return replicas


def cell_summary(cell: CellData, lab: Labelling, rules: PatternRules, replicas: list[dict], k, p,
                 notes: list[str]) -> dict:
    first = next(iter(cell.answers.values()))
    return {
        "config": {"source": "analyze", "files": [str(f) for f in cell.files], "format": cell.fmt,
                   "labeler": lab.opts.labeler, "names": lab.source,
                   "pattern": {"window": rules.window, "stable_min_stability": rules.stable_min_stability,
                               "decay_min_silo_drop": rules.decay_min_silo_drop,
                               "decay_min_entropy_drop": rules.decay_min_entropy_drop},
                   "embedder": lab.embedder_cfg},
        "models": {"agents": "external"}, "n": len(first[0]), "steps": len(first), "k": k, "p": p,
        "agent_names": cell.agent_names, "label_names": lab.names, "notes": notes, "complete": True,
        "replicas": replicas,
    }


def analyze(files: list[Path], out: Path, *, sets: dict | None = None, names_file: Path | None = None,
            window: int = 20, rules_kw: dict | None = None, labeler: str = "name", embed: bool = False,
            embedder_file: Path | None = None, device: str = "auto", mds_steps: str = "first,middle,last",
            overwrite: bool = False) -> dict:
    """One run from its files in order; sets: its k, p and replica (--set), any of them."""
    opts = Options(names_file, window, rules_kw or {}, labeler, embed, embedder_file, device, mds_steps, overwrite)
    check_options(out, opts)
    sets = sets or {}
    notes: list[str] = []
    cell = read_cell([(sets.get("replica"), files)], notes)
    lab = Labelling(opts)  # after reading: a bad file is refused before any model loads
    label_cell(cell, lab)
    first = next(iter(cell.answers.values()))
    rules = make_rules(opts, len(first), notes)
    k, p = sets.get("k"), sets.get("p")
    where = ", ".join(f"{key}={sets[key]:g}" for key in ("k", "p") if key in sets)
    title = f"{files[0].name}{' + ...' if len(files) > 1 else ''}: n={len(first[0])}, T={len(first)}" + \
        (f", {where}" if where else "")
    replicas = write_cell(out, cell, lab, rules, None, title, mds_steps)
    summary = cell_summary(cell, lab, rules, replicas, k, p, notes)
    write_json_atomic(out / SUMMARY, summary)
    return summary


def analyze_grid(inputs: list[Path], out: Path, pattern: str, *, sets: dict | None = None,
                 **options) -> dict:
    """Many runs, their parameters from their file names -> a grid in out (cells/k{K}_p{P}/, summary.json)."""
    opts = Options(**options)
    check_options(out, opts)
    runs = group_runs(expand_inputs(inputs), compile_pattern(pattern), sets or {})
    missing = [key for key in ("k", "p") if getattr(runs[0], key) is None]
    if missing:
        raise UserError(f"--pattern {pattern!r}: every run needs k and p; give {' and '.join(missing)} by a field "
                        f"({{k}}, {{p}} or {{p10}}) or by --set")
    by_cell: dict[tuple, list[ImportedRun]] = {}
    for run in runs:
        by_cell.setdefault((run.k, run.p), []).append(run)
    notes: list[str] = []
    cell_notes = {kp: [] for kp in by_cell}  # how each run's files were joined: kept in its cell's summary
    cells = {kp: read_cell([(r.replica, list(r.files)) for r in rs], cell_notes[kp]) for kp, rs in by_cell.items()}
    lab = Labelling(opts)  # after reading: a bad file is refused before any model loads
    for cell in cells.values():
        label_cell(cell, lab)
    T = min(len(rows) for c in cells.values() for rows in c.answers.values())
    rules = make_rules(opts, T, notes)
    if is_complete(out):
        (out / SUMMARY).unlink()  # --overwrite: the grid reads as incomplete until its cells are written
    listing = []
    for (k, p), cell in cells.items():
        rel = Path("cells") / cell_dirname(k, p)
        first = next(iter(cell.answers.values()))
        title = f"{pattern}: n={len(first[0])}, T={len(first)}, k={k}, p={p:g}"
        replicas = write_cell(out / rel, cell, lab, rules, (k, p), title, opts.mds_steps)
        write_json_atomic(out / rel / SUMMARY, cell_summary(cell, lab, rules, replicas, k, p, cell_notes[(k, p)]))
        listing.append({"k": k, "p": p, "dir": str(rel), "replicas": [r["replica"] for r in replicas],
                        "mean_final_n_silos": sum(r["final_n_silos"] for r in replicas) / len(replicas)})
    summary = {"config": {"source": "analyze", "pattern": pattern, "inputs": [str(i) for i in inputs],
                          "set": sets or {}, "labeler": opts.labeler, "names": lab.source},
               "models": {"agents": "external"}, "runs": len(runs), "notes": notes, "complete": True,
               "cells": listing}
    write_json_atomic(out / SUMMARY, summary)
    return summary


def _distance_outputs(stage: Path, emb: dict, labs: dict, names: list[str], title: str, spec: str, T: int) -> None:
    import matplotlib.pyplot as plt

    from .perspective import pairwise_distances, parse_steps, perspective_figure
    from .plots import save_fig

    n = next(iter(emb.values())).shape[1]
    mean_d = {}
    with open(stage / "distance.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["replica", "t", "mean_distance"])
        for r, X in emb.items():
            vals = []
            for t in range(T):
                D = pairwise_distances(X[t].astype(float))
                vals.append(float(D.sum() / (n * (n - 1))) if n > 1 else 0.0)
                w.writerow([r, t, f"{vals[-1]:.6f}"])
            mean_d[r] = vals
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r, vals in mean_d.items():
        ax.plot(range(T), vals, lw=1, marker="o" if T <= 12 else None, ms=3, label=f"replica {r}")
    ax.set_xlabel("step t")
    ax.set_ylabel("mean pairwise distance D(t)")
    ax.set_title(title, fontsize=9)
    if len(mean_d) <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_fig(fig, stage / "distance.png")
    steps = parse_steps(spec, T)
    rows = [(f"replica {r}", {t: X[t] for t in steps}, {t: labs[r][t] for t in steps}, names)
            for r, X in list(emb.items())[:4]]
    perspective_figure(stage / "perspective.png", rows)



def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tensorsim.analyze",
                                 description="Label and measure transcripts from elsewhere (wide CSV, one row per "
                                             "step and one column per agent; or tensorsim transcript.jsonl).")
    ap.add_argument("files", nargs="+", type=Path,
                    help="input files of one run, in order; with --pattern: files, directories or globs of many runs")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a run parameter: k=5, p=0.5 or replica=3 (repeatable); with --pattern, for the fields "
                         "the pattern lacks")
    ap.add_argument("--pattern", default=None,
                    help="file-name pattern of many runs, e.g. 'output{p10}_{k}_{replica}' ({p10} = p x 10; "
                         "fields {k}, {p}, {p10}, {replica}); a _2nd file is joined to its run")
    ap.add_argument("--names", type=Path, default=None,
                    help="label names, one per line (default: the packaged knowledge base's flower names)")
    ap.add_argument("--labeler", choices=("name", "centroid"), default="name",
                    help="name: earliest known name in the answer; centroid: nearest centroid of the packaged "
                         "knowledge base's answers in embedding space (needs --embed)")
    ap.add_argument("--window", type=int, default=20, help="final window of the pattern rules (capped to T)")
    ap.add_argument("--stable-min-stability", type=float, default=PatternRules.stable_min_stability)
    ap.add_argument("--decay-min-silo-drop", type=int, default=PatternRules.decay_min_silo_drop)
    ap.add_argument("--decay-min-entropy-drop", type=float, default=PatternRules.decay_min_entropy_drop)
    ap.add_argument("--embed", action="store_true", help="embed the answers: distance and perspective-space figures")
    ap.add_argument("--embedder", type=Path, default=None,
                    help="embedder config YAML (default conf/embedder/minilm.yaml, the embedded model)")
    ap.add_argument("--mds-steps", default="first,middle,last", help="steps of the perspective figure")
    ap.add_argument("--device", default="auto", help="device for the embedder")
    ap.add_argument("--overwrite", action="store_true", help="replace a completed analysis in --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = dict(names_file=args.names, window=args.window,
                   rules_kw={"stable_min_stability": args.stable_min_stability,
                             "decay_min_silo_drop": args.decay_min_silo_drop,
                             "decay_min_entropy_drop": args.decay_min_entropy_drop},
                   labeler=args.labeler, embed=args.embed, embedder_file=args.embedder, device=args.device,
                   mds_steps=args.mds_steps, overwrite=args.overwrite)
    try:
        sets = parse_sets(args.sets)
        if args.pattern is not None:
            summary = analyze_grid(args.files, args.out, args.pattern, sets=sets, **options)
        else:
            summary = analyze(args.files, args.out, sets=sets, **options)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in summary["notes"]:
        print(f"[analyze] {note}", file=sys.stderr)
    if "cells" in summary:
        print(f"[analyze] {summary['runs']} runs in {len(summary['cells'])} (k, p) cells -> {args.out}")
        return 0
    print(f"[analyze] n={summary['n']} agents, T={summary['steps']} steps -> {args.out}")
    for r in summary["replicas"]:
        print(f"  replica {r['replica']}: {r['final_n_silos']} silo(s), pattern {r['pattern']}")
    return 0
