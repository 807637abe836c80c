"""`python -m tensorsim.compare A B [--out DIR]`: does run set A behave like run set B, cell by cell?

A and B are anything `report` reads (a run, a packed grid, a multirun, an `analyze --pattern` import).
For every cell present in both (cells match on every swept key: k, p, noise, graph, ...), per metric
(final silos, final entropy, step of the last label change, mean S over the final --window steps): runs,
mean ± sample sd on each side, the difference A − B and a two-sided two-sample test
(tensorsim/analysis/twosample.py). The p-values of all the cells and metrics are one family, adjusted by
--adjust (Holm by default: one comparison asks many questions at once); a metric differs where its
adjusted p is below --alpha. Cells on one side only are listed.
Written into DIR: compare.csv (one row per cell and metric, a column per swept key), compare_heatmaps.png
(A, B and A − B over k and p, or the two keys that vary most, differing cells boxed),
compare_stability.png and compare_entropy.png (S(t), E(t): A's and B's bands overlaid per cell), and
compare.md last (the tables; its presence means the rest is written).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..outputs import write_csv_atomic, write_text_atomic
from .dims import CellKey, choose_layout, key_values, sort_keys
from .runs import Cell, find_cells, group_cells, run_values, swept_keys
from .twosample import ADJUSTMENTS, TESTS, adjust, two_sample

METRICS = {"final_silos": "final silos", "final_entropy": "final E [nats]", "last_change": "last change step",
           "window_stability": "S̄ over the final window"}
COMPARE_STATS = ["metric", "runs_a", "mean_a", "sd_a", "runs_b", "mean_b", "sd_b", "diff", "test", "p_value",
                 "p_adjusted", "differs"]


def compare_columns(names: tuple[str, ...]) -> list[str]:
    """compare.csv's header: one column per swept key (k, p first), then COMPARE_STATS."""
    return list(names) + COMPARE_STATS


# ------------------------------------------------------------------------------------------ inputs

def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"--metrics {unknown[0] if unknown else repr(text)} is not known: choose from "
                        f"{', '.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def load_set(root: Path, side: str, notes: list[str]) -> list[Cell]:
    """Every complete run under root."""
    if not root.is_dir():
        raise UserError(f"{side} {root}: no such directory")
    found: list[str] = []
    cells = find_cells(root, found)
    notes += [f"{side}: {n}" for n in found]
    if not cells:
        raise UserError(f"{side} {root}: no complete run found (a complete run directory holds summary.json)")
    return cells


def group_sets(a: list[Cell], b: list[Cell]) -> tuple[dict, dict]:
    """Both sets' cells grouped by the same keys, every key either side swept (a key one side did not
    sweep takes that side's config value: dims / Cell.value), so that their cells match on all of them."""
    names = swept_keys(a + b)
    return group_cells(a, names), group_cells(b, names)


# ----------------------------------------------------------------------------------------- numbers

def _mean_sd(x: list[float]) -> tuple[float, float]:
    if not x:
        return math.nan, math.nan
    return float(np.mean(x)), (float(np.std(x, ddof=1)) if len(x) > 1 else math.nan)


def compare_cell(key: CellKey, a: list[Cell], b: list[Cell], metrics: list[str], window: int, test: str) -> list[dict]:
    """One row per metric: both sides' samples summarised and tested (p not yet adjusted)."""
    va, vb = run_values(a, window), run_values(b, window)
    rows = []
    for m in metrics:
        xa = [x for x in va[m] if math.isfinite(x)]
        xb = [x for x in vb[m] if math.isfinite(x)]
        (ma, sa), (mb, sb) = _mean_sd(xa), _mean_sd(xb)
        name, p = two_sample(xa, xb, test)
        rows.append({"cell": key, **dict(key.items), "metric": m, "runs_a": len(xa), "mean_a": ma, "sd_a": sa,
                     "runs_b": len(xb), "mean_b": mb, "sd_b": sb, "diff": ma - mb, "test": name, "p_value": p})
    return rows


def compare_sets(A: dict, B: dict, metrics: list[str], window: int, test: str, how: str, alpha: float) -> dict:
    """The rows of every common cell with adjusted p-values and flags, and the cells of one side only."""
    common = sort_keys([key for key in A if key in B])
    rows = [r for key in common for r in compare_cell(key, A[key], B[key], metrics, window, test)]
    for r, q in zip(rows, adjust([r["p_value"] for r in rows], how)):
        r["p_adjusted"] = q
        r["differs"] = bool(math.isfinite(q) and q < alpha)
    return {"common": common, "rows": rows, "only_a": [key for key in A if key not in B],
            "only_b": [key for key in B if key not in A]}


# ----------------------------------------------------------------------------------------- writing

def _g(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def csv_rows(rows: list[dict], names: tuple[str, ...]) -> list[list[str]]:
    return [[_g(r[n]) for n in names] + [r["metric"], r["runs_a"], _g(r["mean_a"], 6), _g(r["sd_a"], 6), r["runs_b"],
             _g(r["mean_b"], 6), _g(r["sd_b"], 6), _g(r["diff"], 6), r["test"], _g(r["p_value"], 6),
             _g(r["p_adjusted"], 6), int(r["differs"])] for r in rows]


def _ms(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f}" + ("" if math.isnan(sd) else f" ± {sd:.2f}")


def _cells_text(keys: list[tuple]) -> str:
    return ", ".join(k.label() for k in keys) or "none"


def markdown(result: dict, metrics: list[str], names: tuple[str, str], roots: tuple[Path, Path], window: int,
             alpha: float, how: str, notes: list[str], keys: tuple[str, ...] = ("k", "p")) -> str:
    """compare.md; keys: the swept keys, one table column each."""
    rows, (na, nb) = result["rows"], names
    flagged = {}
    for r in rows:
        if r["differs"]:
            flagged.setdefault(r["cell"], []).append(METRICS[r["metric"]])
    adj = {"holm": "Holm-adjusted", "bh": "Benjamini-Hochberg-adjusted", "none": "unadjusted"}[how]
    lines = [f"# {na} vs {nb}", "",
             f"{na} = `{roots[0]}`, {nb} = `{roots[1]}`. Per cell ({', '.join(keys)}): runs, mean ± sample sd on "
             f"each side, "
             f"the difference {na} − {nb}, and a two-sided two-sample test; p-values of all "
             f"{len(rows)} tests are {adj} as one family, and **differs** marks adjusted p < {alpha:g}. "
             f"S̄: mean S(t) over the last {window} steps.", "",
             f"**{len(flagged)} of {len(result['common'])} common cells differ**"
             + (": " + "; ".join(f"{key.label()} ({', '.join(ms)})" for key, ms in flagged.items()) if flagged
                else "."), "",
             f"Only in {na}: {_cells_text(result['only_a'])}. Only in {nb}: {_cells_text(result['only_b'])}."]
    for m in metrics:
        lines += ["", f"## {METRICS[m]}", "",
                  "| " + " | ".join(keys) + f" | runs {na} | runs {nb} | {na} | {nb} | {na} − {nb} | test | p "
                  "| adj. p | differs |", "|---" * (len(keys) + 9) + "|"]
        for r in (r for r in rows if r["metric"] == m):
            lines.append(f"| {' | '.join(_g(r[n]) for n in keys)} | {r['runs_a']} | {r['runs_b']} | "
                         f"{_ms(r['mean_a'], r['sd_a'])} | {_ms(r['mean_b'], r['sd_b'])} | {_g(r['diff'])} | "
                         f"{r['test']} | {_g(r['p_value'])} | {_g(r['p_adjusted'])} | "
                         f"{'**yes**' if r['differs'] else 'no'} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def compare(a: Path, b: Path, out: Path, *, window: int = 20, alpha: float = 0.05, metrics: str = ",".join(METRICS),
            test: str = "auto", how: str = "holm", band: str = "sd", names: tuple[str, str] = ("A", "B")) -> dict:
    """Compare run sets a and b into out; returns compare_sets' result."""
    chosen = parse_metrics(metrics)
    if window < 1:
        raise UserError(f"--window={window} is not allowed: an integer >= 1")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha={alpha:g} is not allowed: a number in (0, 1)")
    if test not in TESTS:
        raise UserError(f"--test={test} is not allowed: one of {', '.join(TESTS)}")
    if how not in ADJUSTMENTS:
        raise UserError(f"--adjust={how} is not allowed: one of {', '.join(ADJUSTMENTS)}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    notes: list[str] = []
    A, B = group_sets(load_set(a, names[0], notes), load_set(b, names[1], notes))
    keys = next(iter(A)).names
    result = compare_sets(A, B, chosen, window, test, how, alpha)
    T_max = max(len(s) for groups in (A, B) for cs in groups.values() for c in cs for s in c.S.values())
    if window > T_max - 1:
        notes.append(f"--window={window} is longer than the runs ({T_max} steps): S̄ averages every step t >= 1")
    if not result["common"]:
        raise UserError(f"no ({', '.join(keys)}) cell in both sets: {names[0]} has {_cells_text(list(A))}; "
                        f"{names[1]} has {_cells_text(list(B))}")
    from .compare_figures import difference_heatmaps, overlaid_curves

    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").unlink(missing_ok=True)  # written last: until then the directory reads as unfinished
    layout = choose_layout(key_values(result["common"]))
    difference_heatmaps(out / "compare_heatmaps.png", result["rows"], {m: METRICS[m] for m in chosen}, names, layout)
    for which, file in (("S", "compare_stability.png"), ("E", "compare_entropy.png")):
        overlaid_curves(out / file, result["common"], A, B, which, band, names,
                        {r["cell"] for r in result["rows"] if r["differs"]}, layout)
    write_csv_atomic(out / "compare.csv", compare_columns(keys), csv_rows(result["rows"], keys))
    write_text_atomic(out / "compare.md", markdown(result, chosen, names, (a, b), window, alpha, how, notes, keys))
    result["notes"] = notes
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tensorsim.compare",
                                 description="Compare two run sets cell by cell (every swept key): means, differences, "
                                             "two-sample tests, figures.")
    ap.add_argument("a", type=Path, help="run set A: a run, a packed grid, a multirun or an analysed directory")
    ap.add_argument("b", type=Path, help="run set B, likewise")
    ap.add_argument("--out", type=Path, default=Path("compare"), help="where to write (default: ./compare)")
    ap.add_argument("--window", type=int, default=20, help="final steps over which S is averaged (default 20)")
    ap.add_argument("--alpha", type=float, default=0.05, help="level below which an adjusted p flags a difference")
    ap.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated, of {', '.join(METRICS)}")
    ap.add_argument("--test", default="auto", help="auto (exact permutation test for small samples, else "
                                                   "Mann-Whitney U), mwu or permutation")
    ap.add_argument("--adjust", default="holm", help="p-value adjustment over all tests: holm, bh or none")
    ap.add_argument("--band", choices=("sd", "iqr"), default="sd", help="band around the mean curves")
    ap.add_argument("--names", default="A,B", help="what to call the two sets in tables and figures (default A,B)")
    args = ap.parse_args(argv)
    try:
        names = tuple(s.strip() for s in args.names.split(","))
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise UserError(f"--names {args.names!r} is not allowed: two different names, comma-separated")
        result = compare(args.a, args.b, args.out, window=args.window, alpha=args.alpha, metrics=args.metrics,
                         test=args.test, how=args.adjust, band=args.band, names=names)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in result["notes"]:
        print(f"[compare] {n}", file=sys.stderr)
    differ = {r["cell"] for r in result["rows"] if r["differs"]}
    print(f"[compare] {len(result['common'])} common cells, {len(differ)} differ; only in {names[0]}: "
          f"{len(result['only_a'])}, only in {names[1]}: {len(result['only_b'])} -> {args.out / 'compare.md'}")
    return 0
