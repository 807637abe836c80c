"""Transcripts made elsewhere, read into answers [T][n] per replica: wide CSV (one row per step, one
column per agent; several files are one run concatenated in order), tensorsim's transcript.jsonl or
transcript.parquet. Every defect is a one-line UserError naming the file and line."""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

from ..errors import UserError

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
