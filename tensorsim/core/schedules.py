"""Per-step values of trial.k and trial.p: a number, or a schedule over the steps t = 0 .. T-1.

Forms of one value (T = trial.steps):
  5                           constant
  {step: {0: 25, 40: 5}}      piecewise constant: the value of the last breakpoint <= t; the first is 0
  {linear: [25, 1]}           from 25 at t=0 to 1 at t=T-1 in equal increments (T=1: the start)
  {cosine: [25, 1]}           half a cosine from a to b: a + (b - a) (1 - cos(pi t / (T-1))) / 2
  {csv: path}                 one value per line, the first line may be a header; at least T values
k schedules are rounded to the nearest integer (halves to even) after evaluation. A constant is
evaluated by the same path as a schedule whose every step holds it, so the two give the same bytes.

Every bad value is a one-line UserError naming the key, the value and what is allowed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import UserError, is_num

FORMS = ("step", "linear", "cosine", "csv")
ALLOWED = ("a number, or one of {step: {0: a, t1: b, ...}}, {linear: [a, b]}, {cosine: [a, b]}, "
           "{csv: file}")


def is_schedule(value) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in FORMS


def _bad(key: str, value, why: str) -> UserError:
    return UserError(f"{key}={plain(value)!r} is not allowed: {why}")


def plain(value):
    """Plain Python of an OmegaConf node, for messages and labels."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [plain(v) for v in value]
    return value


def _pair(key: str, spec, form: str) -> tuple[float, float]:
    ends = spec[form]
    if isinstance(ends, (str, Mapping)) or not hasattr(ends, "__len__") or len(ends) != 2 \
            or not all(is_num(e) for e in ends):
        raise _bad(key, spec, f"{form} takes two numbers [start, end]")
    return float(ends[0]), float(ends[1])


def _steps_form(key: str, spec, T: int) -> torch.Tensor:
    table = spec["step"]
    if not isinstance(table, Mapping) or not table:
        raise _bad(key, spec, "step takes a mapping {first step: value, ...} starting at step 0")
    points = []
    for t, v in table.items():
        try:
            t = int(t)
        except (TypeError, ValueError):
            raise _bad(key, spec, f"step breakpoints are integer steps (got {t!r})") from None
        if not is_num(v):
            raise _bad(key, spec, f"the value at step {t} must be a number (got {v!r})")
        points.append((t, float(v)))
    points.sort()
    if points[0][0] != 0:
        raise _bad(key, spec, "the first step breakpoint must be 0 (the value every run starts with)")
    if len({t for t, _ in points}) != len(points):
        raise _bad(key, spec, "each step breakpoint may appear once")
    out = torch.empty(T, dtype=torch.float64)
    for (t0, v), (t1, _) in zip(points, points[1:] + [(max(T, points[-1][0] + 1), None)]):
        out[t0:t1] = v
    return out


def _csv_form(key: str, spec, T: int) -> torch.Tensor:
    path = Path(str(spec["csv"]))
    if not path.is_file():
        raise _bad(key, spec, f"csv takes a file of one value per step ({path} is not a file)")
    lines = [ln.split(",")[0].strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    values = []
    for i, text in enumerate(lines):
        try:
            values.append(float(text))
        except ValueError:
            if i == 0 and not values:  # a header line
                continue
            raise _bad(key, spec, f"line {i + 1} of {path} is {text!r}, not a number") from None
    if len(values) < T:
        raise _bad(key, spec, f"{path} holds {len(values)} values, fewer than trial.steps={T}")
    if not all(math.isfinite(v) for v in values[:T]):
        raise _bad(key, spec, f"{path} holds a value that is not finite in its first {T}")
    return torch.tensor(values[:T], dtype=torch.float64)


def evaluate(key: str, value, T: int) -> torch.Tensor:
    """One value of trial.k / trial.p over the steps. -> [T] float64 (k not yet rounded)."""
    if is_num(value):
        return torch.full((T,), float(value), dtype=torch.float64)
    if not is_schedule(value):
        raise _bad(key, value, ALLOWED)
    form = next(iter(value))
    if form == "step":
        return _steps_form(key, value, T)
    if form == "csv":
        return _csv_form(key, value, T)
    a, b = _pair(key, value, form)
    frac = torch.arange(T, dtype=torch.float64) / max(T - 1, 1)  # [T] in [0, 1]
    if form == "cosine":
        frac = (1 - torch.cos(math.pi * frac)) / 2
    return a + (b - a) * frac


def k_values(value, T: int, n: int) -> torch.Tensor:
    """trial.k over the steps, checked: [T] int64 with 1 <= k_t < n."""
    k = torch.round(evaluate("trial.k", value, T)).to(torch.int64)
    if is_num(value) and not float(value).is_integer():
        raise _bad("trial.k", value, f"an integer with 1 <= k < trial.n={n}, or a schedule of such values")
    bad = ((k < 1) | (k >= n)).nonzero().flatten()
    if len(bad):
        t = int(bad[0])
        raise _bad("trial.k", value, f"every k_t must satisfy 1 <= k_t < trial.n={n} (k_{t} = {int(k[t])})")
    return k


def p_values(value, T: int) -> torch.Tensor:
    """trial.p over the steps, checked: [T] float32 probabilities (float32 as the coins compare them)."""
    p = evaluate("trial.p", value, T)
    bad = (~((p >= 0) & (p <= 1))).nonzero().flatten()
    if len(bad):
        t = int(bad[0])
        raise _bad("trial.p", value, f"every p_t must be a probability in [0, 1] (p_{t} = {float(p[t]):g})")
    return p.to(torch.float32)


def label(value):
    """A short name of one value for cell directories and the k, p columns: the number itself for a
    constant, else e.g. linear25-1, cosine0.9-0.1, step0-25_40-5, csv-myfile."""
    if is_num(value):
        return value
    form = next(iter(value))
    body = value[form]
    if form == "step":
        return "step" + "_".join(f"{int(t)}-{float(v):g}" for t, v in sorted((int(t), v) for t, v in body.items()))
    if form == "csv":
        return "csv-" + Path(str(body)).stem
    return f"{form}{float(body[0]):g}-{float(body[1]):g}"
