"""Parameters of runs made elsewhere: `--set key=value` and file-name patterns such as
`output{p10}_{k}_{replica}`, and the grouping of many files into runs.

A pattern is matched against a file's name without its extension. Fields: {k} (an integer), {p} (a
decimal such as 0.5), {p10} (p times ten, as the authors of arXiv 2412.06834 name their files: 5 is
p = 0.5) and {replica} (an integer, kept as written). A name may end in an ordinal part suffix,
`_2nd`, `_3rd`, `_4th`, ...: that file continues the run of the same name without the suffix, and the
parts of one run are joined in ordinal order.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
FIELDS = {"k": r"(\d+)", "p": r"(\d+(?:\.\d+)?)", "p10": r"(\d+)", "replica": r"(\d+)"}
SETTABLE = ("k", "p", "replica")
PART_SUFFIX = r"(?:_(\d+)(?:st|nd|rd|th))?"


@dataclass(frozen=True)
class ImportedRun:
    """One run made elsewhere: its parameters and its files in order (first part first)."""
    k: int | None
    p: float | None
    replica: int
    files: tuple[Path, ...]

    def describe(self) -> str:
        return f"k={self.k}, p={_p(self.p)}, replica {self.replica}"


def _p(p) -> str:
    return "?" if p is None else f"{p:g}"


# ------------------------------------------------------------------------------------------- values

def check_value(key: str, value, where: str):
    """A parameter's value, checked; where names its source in the error (a flag or a file)."""
    if key == "p":
        if not 0 <= value <= 1:
            raise UserError(f"{where}: p={value:g} is not allowed: a number in [0, 1]")
        return float(value)
    if key == "k" and value < 1:
        raise UserError(f"{where}: k={value} is not allowed: an integer >= 1")
    return int(value)


def parse_sets(items: list[str]) -> dict:
    """['k=5', 'p=0.5', 'replica=3'] -> {'k': 5, 'p': 0.5, 'replica': 3}."""
    out: dict = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            raise UserError(f"--set {item!r} is not allowed: key=value with a key among {', '.join(SETTABLE)}")
        if key not in SETTABLE:
            raise UserError(f"--set {key}={text} is not allowed: the key must be one of {', '.join(SETTABLE)}")
        if key in out:
            raise UserError(f"--set {key} is given twice")
        try:
            value = float(text) if key == "p" else int(text)
        except ValueError:
            want = "a number" if key == "p" else "an integer"
            raise UserError(f"--set {key}={text} is not allowed: {want}") from None
        out[key] = check_value(key, value, "--set")
    return out


# ----------------------------------------------------------------------------------------- patterns

@dataclass(frozen=True)
class Pattern:
    text: str
    regex: re.Pattern
    fields: tuple[str, ...]


def compile_pattern(text: str) -> Pattern:
    """'output{p10}_{k}_{replica}' -> a regex over a file's stem, with one group per field."""
    body = text
    for suffix in DATA_SUFFIXES:  # 'output{p10}_{k}_{replica}.csv' means the same
        if body.lower().endswith(suffix):
            body = body[:-len(suffix)]
    pieces = re.split(r"\{([^{}]*)\}", body)
    fields = pieces[1::2]
    if any("{" in s or "}" in s for s in pieces[::2]):
        raise UserError(f"--pattern {text!r}: unbalanced braces")
    for name in fields:
        if name not in FIELDS:
            raise UserError(f"--pattern {text!r}: unknown field {{{name}}}: the fields are "
                            + ", ".join(f"{{{f}}}" for f in FIELDS))
    if len(set(fields)) < len(fields):
        raise UserError(f"--pattern {text!r}: a field appears twice")
    if "p" in fields and "p10" in fields:
        raise UserError(f"--pattern {text!r}: give p as {{p}} or as {{p10}}, not both")
    if not fields:
        raise UserError(f"--pattern {text!r} has no field: name at least one of "
                        + ", ".join(f"{{{f}}}" for f in FIELDS))
    regex = "".join(re.escape(s) if i % 2 == 0 else FIELDS[s] for i, s in enumerate(pieces))
    return Pattern(text, re.compile(regex + PART_SUFFIX, re.IGNORECASE), tuple(fields))


def parse_name(path: Path, pattern: Pattern) -> tuple[dict, int]:
    """A file's parameters and part number (1 without an ordinal suffix) by the pattern."""
    stem = path.name[:-len(path.suffix)] if path.suffix.lower() in DATA_SUFFIXES else path.name
    m = pattern.regex.fullmatch(stem)
    if m is None:
        raise UserError(f"{path}: the name does not match --pattern {pattern.text!r}")
    values = {}
    for name, text in zip(pattern.fields, m.groups()):
        key = "p" if name == "p10" else name
        value = int(text) / 10 if name == "p10" else float(text) if name == "p" else int(text)
        values[key] = check_value(key, value, str(path))
    part = int(m.group(len(pattern.fields) + 1) or 1)
    if part < 1:
        raise UserError(f"{path}: part {part} is not allowed: parts are numbered from 1 (_2nd, _3rd, ...)")
    return values, part


# ------------------------------------------------------------------------------------------- files

def expand_inputs(args: list[Path]) -> list[Path]:
    """Files, directories (their data files) and quoted globs -> the files, each once, in order."""
    out: list[Path] = []
    for arg in args:
        if arg.is_dir():
            found = sorted(p for p in arg.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
            if not found:
                raise UserError(f"{arg}: a directory without data files ({', '.join(DATA_SUFFIXES)})")
        elif arg.exists():
            found = [arg]
        elif glob.has_magic(str(arg)):
            found = sorted(Path(p) for p in glob.glob(str(arg)) if Path(p).is_file())
            if not found:
                raise UserError(f"{arg}: no file matches")
        else:
            raise UserError(f"{arg}: no such file or directory")
        out.extend(p for p in found if p not in out)
    return out


def group_runs(paths: list[Path], pattern: Pattern, sets: dict) -> list[ImportedRun]:
    """Every file by the pattern (and --set for the fields it lacks) -> the runs, sorted by k, p, replica."""
    both = [key for key in sets if key in {"p" if f == "p10" else f for f in pattern.fields}]
    if both:
        raise UserError(f"--set {both[0]}={sets[both[0]]} and --pattern {pattern.text!r} both give {both[0]}: "
                        f"give it once")
    parts: dict[tuple, dict[int, Path]] = {}
    for path in paths:
        values, part = parse_name(path, pattern)
        values = {**sets, **values}
        key = (values.get("k"), values.get("p"), values.get("replica", 0))
        have = parts.setdefault(key, {})
        if part in have:
            run = ImportedRun(*key, ())
            raise UserError(f"{have[part]} and {path} are both part {part} of run {run.describe()}: "
                            f"one run per (k, p, replica)")
        have[part] = path
    runs = []
    for key, have in parts.items():
        numbers = sorted(have)
        if numbers != list(range(1, len(numbers) + 1)):
            missing = min(set(range(1, numbers[-1] + 1)) - set(numbers))
            raise UserError(f"{have[numbers[-1]]}: run {ImportedRun(*key, ()).describe()} lacks its part {missing}"
                            f" (found parts {', '.join(map(str, numbers))})")
        runs.append(ImportedRun(*key, tuple(have[i] for i in numbers)))
    return sorted(runs, key=lambda r: (r.k is None, r.k or 0, r.p is None, r.p or 0.0, r.replica))
