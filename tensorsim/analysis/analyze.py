"""`python -m tensorsim.analyze FILES... --out DIR`: label and measure transcripts produced elsewhere.

Input formats (one format per call; several files are one run, concatenated in the given order):
  wide CSV (.csv)   a header row, then one row per step: the step index first, then one column per agent.
                    A cell is one answer, either plain text or a Python list literal of one string
                    ("[' The prettiest flower is the rose, ...']"). The step column may continue or restart
                    from one file to the next: steps are re-indexed 0..T-1 in file order.
  transcript (.jsonl)  tensorsim's own transcript.jsonl: {"replica", "t", "agent", "response", ...} per line.
  transcript (.parquet)  tensorsim's transcript.parquet (output.format=parquet): the same columns.
Every answer is labelled (name labeler by default: the earliest known flower name in the text), every
metric and pattern is computed as in a simulation, and DIR receives what a simulation writes:
metrics.csv, agents.csv (partner and mirrored empty), transcript.jsonl, summary.json, stability.png,
entropy.png, silos.png; with --embed also distance.csv and distance.png (mean pairwise distance
between the agents' answer embeddings over t) and perspective.png (classical MDS of the embeddings).
Files are staged and renamed into place; summary.json comes last and marks DIR complete.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core import metrics
from ..core.patterns import PatternRules, label_name, last_change_step, run_pattern, silo_patterns
from ..errors import UserError
from ..outputs import SUMMARY, is_complete, write_json_atomic

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


# ----------------------------------------------------------------------------------------- reading

def parse_cell(text: str) -> str:
    """One CSV cell -> the answer: a list literal of strings is unwrapped, anything else is kept as is."""
    s = text.strip()
    if len(s) >= 2 and s[0] == "[" and s[-1] == "]":
        try:
            value = ast.literal_eval(s)  # literals only: never evaluates code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return " ".join(v.strip() for v in value) if len(value) > 1 else value[0]
    return text


def _is_step(text: str) -> bool:
    try:
        v = float(text)
    except ValueError:
        return False
    return v == int(v)


def read_wide_csv(paths: list[Path], notes: list[str]) -> tuple[list[str], list[list[str]]]:
    """-> (agent column names, answers [T][n]) of the files concatenated in order."""
    csv.field_size_limit(2 ** 31 - 1)
    agents: list[str] | None = None
    first_file = None
    answers: list[list[str]] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                rows = list(csv.reader(f))
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except csv.Error as e:
            raise UserError(f"{path}: not a readable CSV ({e})") from None
        if not rows:
            raise UserError(f"{path}: empty file (expected a header row, then one row per step)")
        header = [h.strip() for h in rows[0]]
        cols = header[1:]
        if not cols:
            raise UserError(f"{path}: the header has no agent columns (expected: step, agent, agent, ...)")
        dup = sorted({c for c in cols if cols.count(c) > 1})
        if dup:
            raise UserError(f"{path}: duplicate agent columns in the header: {', '.join(dup)}")
        order = list(range(len(cols)))
        if agents is None:
            agents, first_file = cols, path
        elif cols != agents:
            if sorted(cols) == sorted(agents):
                order = [cols.index(a) for a in agents]
                notes.append(f"{path}: agent columns in another order than in {first_file}; matched by name")
            else:
                missing = [a for a in agents if a not in cols]
                extra = [c for c in cols if c not in agents]
                raise UserError(f"{path}: agent columns differ from {first_file} (missing: "
                                f"{', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'})")
        steps = []
        t0 = len(answers)
        for line, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                raise UserError(f"{path} line {line}: {len(row)} cells, expected {len(header)} like the header "
                                f"(ragged row)")
            if not _is_step(row[0].strip()):
                raise UserError(f"{path} line {line}: the first column must be the step index, got {row[0][:40]!r}")
            steps.append(int(float(row[0])))
            out = []
            for j in order:
                cell = row[1 + j]
                answer = parse_cell(cell)
                if not answer.strip() or answer.strip().lower() in ("nan", "none", "null"):
                    raise UserError(f"{path} line {line}: empty answer in column {cols[j]!r}")
                out.append(answer)
            answers.append(out)
        if not steps:
            raise UserError(f"{path}: no rows after the header")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            notes.append(f"{path}: the step column is not increasing; rows are taken in file order")
        if len(paths) > 1:
            how = ("continues" if t0 and steps[0] == t0 else "restarts" if t0 and steps[0] == 0 else
                   "starts" if not t0 else f"jumps to {steps[0]}")
            notes.append(f"{path}: step column {how} at {steps[0]}; its rows are t = {t0}..{len(answers) - 1}")
    return agents, answers


def _record(path: Path, where: str, rec: dict) -> tuple:
    """One transcript record, checked -> (where, replica, t, agent, response)."""
    for key in ("t", "agent"):
        if not (isinstance(rec.get(key), int) and not isinstance(rec.get(key), bool)) or rec[key] < 0:
            raise UserError(f"{path} {where}: {key!r} must be an integer >= 0")
    if not isinstance(rec.get("response"), str):
        raise UserError(f"{path} {where}: 'response' must be a string")
    r = rec.get("replica", 0)
    if not isinstance(r, int) or isinstance(r, bool):
        raise UserError(f"{path} {where}: 'replica' must be an integer")
    return where, r, rec["t"], rec["agent"], rec["response"]


def _jsonl_records(path: Path) -> list[tuple]:
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {line}: not JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise UserError(f"{path} line {line}: expected an object with t, agent, response")
                records.append(_record(path, f"line {line}", rec))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return records


def _parquet_records(path: Path) -> list[tuple]:
    """tensorsim's transcript.parquet (output.format=parquet): columns t, agent, response, and replica."""
    import pyarrow.parquet as pq

    from ..outputs import parquet_batches

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise UserError(f"{path}: not a readable Parquet table ({str(e).splitlines()[0]})") from None
    cols = ["t", "agent", "response"] + (["replica"] if "replica" in names else [])
    records, row = [], 0
    for batch in parquet_batches(path, cols):
        for rec in batch.to_pylist():
            row += 1
            records.append(_record(path, f"row {row}", rec))
    return records


def read_transcripts(paths: list[Path], notes: list[str]) -> tuple[list[str], dict[int, list[list[str]]]]:
    """-> (agent names, replica -> answers [T][n]); the t of each file are re-indexed after the last file's."""
    data: dict[int, dict[int, dict[int, str]]] = {}
    offset = 0
    for path in paths:
        records = _parquet_records(path) if path.suffix.lower() == ".parquet" else _jsonl_records(path)
        if not records:
            raise UserError(f"{path}: no transcript records")
        ts = sorted({t for _, _, t, _, _ in records})
        index = {t: offset + i for i, t in enumerate(ts)}
        for line, r, t, a, resp in records:
            cell = data.setdefault(r, {}).setdefault(index[t], {})
            if a in cell:
                raise UserError(f"{path} {line}: a second answer of agent {a} at replica {r}, t={t}")
            cell[a] = resp
        if len(paths) > 1:
            notes.append(f"{path}: t {ts[0]}..{ts[-1]} -> t = {offset}..{offset + len(ts) - 1}")
        offset += len(ts)
    n = max(a for steps in data.values() for cell in steps.values() for a in cell) + 1
    out = {}
    for r, steps in sorted(data.items()):
        T = max(steps) + 1
        rows = []
        for t in range(T):
            cell = steps.get(t, {})
            if len(cell) != n:
                missing = [a for a in range(n) if a not in cell]
                raise UserError(f"replica {r}, t={t}: answers of {len(cell)} of {n} agents (missing agent "
                                f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''})")
            rows.append([cell[a] for a in range(n)])
        out[r] = rows
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise UserError(f"replicas have different numbers of steps: {sorted(lengths)}")
    return [str(a) for a in range(n)], out


def read_inputs(paths: list[Path], notes: list[str]) -> tuple[str, list[str], dict[int, list[list[str]]]]:
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file")
        if not p.is_file():
            raise UserError(f"{p}: not a file")
    kinds = []
    for p in paths:
        kind = FORMATS.get(p.suffix.lower())
        if kind is None:
            raise UserError(f"{p}: unknown format {p.suffix or '(no extension)'!r} (expected a wide .csv, a "
                            f"transcript .jsonl or .parquet)")
        kinds.append(kind)
    if len(set(kinds)) > 1:
        raise UserError("mixed input formats: give either wide .csv files or transcript .jsonl or .parquet files")
    if kinds[0] == "csv":
        agents, answers = read_wide_csv(paths, notes)
        return "csv", agents, {0: answers}
    agents, by_replica = read_transcripts(paths, notes)
    return kinds[0], agents, by_replica


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


# ------------------------------------------------------------------------------------------ writing

def analyze(files: list[Path], out: Path, *, names_file: Path | None = None, window: int = 20,
            rules_kw: dict | None = None, labeler: str = "name", embed: bool = False,
            embedder_file: Path | None = None, device: str = "auto", mds_steps: str = "first,middle,last",
            overwrite: bool = False) -> dict:
    notes: list[str] = []
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if is_complete(out) and not overwrite:
        raise UserError(f"--out {out} already holds a completed analysis (summary.json); choose another "
                        f"directory or pass --overwrite")
    if window < 1:
        raise UserError(f"--window={window} is not allowed: an integer >= 1")
    if labeler == "centroid" and not embed:
        raise UserError("--labeler centroid needs --embed (it labels answers by their embeddings)")
    if labeler == "centroid" and names_file is not None:
        raise UserError("--names applies to --labeler name only (the centroid labeler uses the knowledge base's labels)")
    fmt, agent_names, answers = read_inputs(files, notes)
    names, names_source = read_names(names_file)
    T = len(next(iter(answers.values())))
    n = len(agent_names)
    if window > T:
        notes.append(f"--window={window} is longer than the {T} steps: the window is all {T} steps")
        window = T
    rules = PatternRules(window=window, **(rules_kw or {}))
    if not 0 <= rules.stable_min_stability <= 1:
        raise UserError(f"--stable-min-stability={rules.stable_min_stability} is not allowed: a number in [0, 1]")
    if rules.decay_min_silo_drop < 1:
        raise UserError(f"--decay-min-silo-drop={rules.decay_min_silo_drop} is not allowed: an integer >= 1")
    if not rules.decay_min_entropy_drop > 0:
        raise UserError(f"--decay-min-entropy-drop={rules.decay_min_entropy_drop} is not allowed: a number > 0")

    embedder = embedder_cfg = None
    emb: dict[int, np.ndarray] = {}
    if embed:
        from .perspective import default_embedder_cfg, make_embedder

        if embedder_file is not None:
            from omegaconf import OmegaConf

            if not embedder_file.is_file():
                raise UserError(f"--embedder {embedder_file}: no such file")
            embedder_cfg = OmegaConf.to_container(OmegaConf.load(embedder_file), resolve=True)
        else:
            embedder_cfg = default_embedder_cfg()
        embedder = make_embedder(embedder_cfg, device)
        for r, rows in answers.items():
            flat = [a for row in rows for a in row]
            emb[r] = embedder.responses(flat).cpu().numpy().reshape(T, n, -1)  # each distinct text once

    if labeler == "name":
        from ..core.labels import NameLabeler

        lab_fn = NameLabeler(names)
        labels = {r: lab_fn([a for row in rows for a in row]).reshape(T, n) for r, rows in answers.items()}
    else:
        from ..core.labels import CentroidLabeler
        from ..knowledge import load_kb

        kb = load_kb()
        names, names_source = kb.labels, f"centroids of the packaged knowledge base {kb.name}"
        ref = embedder.responses([row[kb.topic_slot] for row in kb.answers]).cpu()
        lab_fn = CentroidLabeler(ref, torch.tensor(kb.agent_labels), len(kb.labels))
        labels = {r: lab_fn(torch.from_numpy(emb[r])) for r in answers}
    L = len(names)

    out.mkdir(parents=True, exist_ok=True)
    if overwrite and is_complete(out):
        (out / SUMMARY).unlink()  # from here on the directory reads as incomplete
        for stale in ("distance.csv", "distance.png", "perspective.png"):
            (out / stale).unlink(missing_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".analyze-"))
    try:
        replicas, stab, ent, labs = [], {}, {}, {}
        with open(stage / "metrics.csv", "w", encoding="utf-8", newline="") as fm, \
                open(stage / "agents.csv", "w", encoding="utf-8", newline="") as fa, \
                open(stage / "transcript.jsonl", "w", encoding="utf-8") as ft:
            wm, wa = csv.writer(fm), csv.writer(fa)
            wm.writerow(["replica", "t", "stability", "entropy", "n_silos"])
            wa.writerow(["replica", "t", "agent", "label", "label_name", "partner", "mirrored"])
            for r, rows in answers.items():
                lab = labels[r]
                S, E, silos = measure(lab, L)
                lab_list = lab.tolist()
                for t in range(T):
                    wm.writerow([r, t, _f6(S[t]), _f6(E[t]), silos[t]])
                    wa.writerows([r, t, i, lab_list[t][i], label_name(lab_list[t][i], names), "", ""]
                                 for i in range(n))
                    ft.writelines(json.dumps({"replica": r, "t": t, "agent": i, "agent_name": agent_names[i],
                                              "context": None, "response": rows[t][i]}, ensure_ascii=False)
                                  + "\n" for i in range(n))
                replicas.append({"replica": r, "seed": None, "final_n_silos": silos[-1],
                                 "pattern": run_pattern(S, silos, E, rules), "last_change_step": last_change_step(S),
                                 "final_entropy": E[-1], "silos": silo_patterns(lab, rules, names)})
                stab[r], ent[r], labs[r] = S, E, lab.numpy()

        from .plots import write_plots

        title = f"{files[0].name}{' + ...' if len(files) > 1 else ''}: n={n}, T={T}"
        write_plots(stage, stab, ent, labs, names, title)
        if embed:
            _distance_outputs(stage, emb, labs, names, title, mds_steps, T)
        for path in sorted(stage.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    summary = {
        "config": {"source": "analyze", "files": [str(f) for f in files], "format": fmt, "labeler": labeler,
                   "names": names_source, "pattern": {"window": rules.window,
                                                      "stable_min_stability": rules.stable_min_stability,
                                                      "decay_min_silo_drop": rules.decay_min_silo_drop,
                                                      "decay_min_entropy_drop": rules.decay_min_entropy_drop},
                   "embedder": embedder_cfg},
        "models": {"agents": "external"}, "n": n, "steps": T, "k": None, "p": None,
        "agent_names": agent_names, "label_names": names, "notes": notes, "complete": True,
        "replicas": replicas,
    }
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tensorsim.analyze",
                                 description="Label and measure transcripts from elsewhere (wide CSV, one row per "
                                             "step and one column per agent; or tensorsim transcript.jsonl).")
    ap.add_argument("files", nargs="+", type=Path, help="input files of one run, in order")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
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
    args = ap.parse_args(argv)
    try:
        summary = analyze(args.files, args.out, names_file=args.names, window=args.window,
                          rules_kw={"stable_min_stability": args.stable_min_stability,
                                    "decay_min_silo_drop": args.decay_min_silo_drop,
                                    "decay_min_entropy_drop": args.decay_min_entropy_drop},
                          labeler=args.labeler, embed=args.embed, embedder_file=args.embedder, device=args.device,
                          mds_steps=args.mds_steps, overwrite=args.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in summary["notes"]:
        print(f"[analyze] {note}", file=sys.stderr)
    print(f"[analyze] n={summary['n']} agents, T={summary['steps']} steps -> {args.out}")
    for r in summary["replicas"]:
        print(f"  replica {r['replica']}: {r['final_n_silos']} silo(s), pattern {r['pattern']}")
    return 0

