"""Two-sample tests for run sets of a few replicates, and p-value adjustment over many tests.

Per-cell samples are small (the authors ran 8 replicates per cell) and full of ties (final silo counts
are small integers, often all 1), so the default is an exact permutation test whenever its splits can
be enumerated cheaply, and Mann-Whitney U (normal approximation, tie and continuity corrections)
otherwise. numpy only: scipy is used in the tests to check these numbers, not at run time.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

TESTS = ("auto", "mwu", "permutation")
ADJUSTMENTS = ("holm", "bh", "none")
EXACT_SPLITS = 20_000   # auto: enumerate every split up to this many (8 vs 8 runs: 12,870)
RANDOM_SPLITS = 20_000  # beyond it, a permutation test draws this many splits (fixed seed: reproducible)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney(a, b) -> tuple[float, float]:
    """(U of a, two-sided p) by the normal approximation with tie and continuity corrections."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    both = np.concatenate([a, b])
    u = float(_ranks(both)[:na].sum() - na * (na + 1) / 2)
    _, counts = np.unique(both, return_counts=True)
    n = na + nb
    var = na * nb / 12 * ((n + 1) - float((counts ** 3 - counts).sum()) / (n * (n - 1)))
    if var <= 0:  # every value equal: nothing tells the samples apart
        return u, 1.0
    z = (abs(u - na * nb / 2) - 0.5) / math.sqrt(var)
    return u, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


@functools.lru_cache(maxsize=64)
def _all_splits(n: int, na: int) -> np.ndarray:
    """Every index set of size na from range(n), as rows [comb(n, na), na] (cached: cells share sizes)."""
    return np.array(list(itertools.combinations(range(n), na)), dtype=np.int64).reshape(-1, na)


def _random_splits(n: int, na: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((RANDOM_SPLITS, n)), axis=1)[:, :na]


def permutation_test(a, b, seed: int = 0) -> tuple[float, float, bool]:
    """(|mean a - mean b|, two-sided p, exact?): the share of splits of the pooled runs into groups of the
    same sizes whose means differ at least as much. Exact when there are at most EXACT_SPLITS splits;
    otherwise estimated from RANDOM_SPLITS random splits as (1 + hits) / (1 + draws), never 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    both = np.concatenate([a, b])
    n, na = len(both), len(a)
    observed = abs(a.mean() - b.mean())
    exact = math.comb(n, na) <= EXACT_SPLITS
    idx = _all_splits(n, na) if exact else _random_splits(n, na, seed)
    sa = both[idx].sum(axis=1)
    diffs = np.abs(sa / na - (both.sum() - sa) / (n - na))
    tol = 1e-9 * max(1.0, observed)  # equal differences summed in another order still count as equal
    hits = int((diffs >= observed - tol).sum())
    return float(observed), (hits / len(idx) if exact else (1 + hits) / (1 + len(idx))), exact


def two_sample(a, b, test: str = "auto") -> tuple[str, float]:
    """(name of the test used, two-sided p); nan when a side has no run."""
    if len(a) == 0 or len(b) == 0:
        return "none", math.nan
    if test == "auto":
        test = "permutation" if math.comb(len(a) + len(b), len(a)) <= EXACT_SPLITS else "mwu"
    if test == "mwu":
        return "mann-whitney", mann_whitney(a, b)[1]
    _, p, exact = permutation_test(a, b)
    return "permutation" if exact else f"permutation ({RANDOM_SPLITS} draws)", p


def adjust(pvalues: list[float], how: str) -> list[float]:
    """Adjusted p-values over one family of tests (nan stays nan and is not counted): holm controls the
    chance of any false flag, bh (Benjamini-Hochberg) the expected share of false flags, none is as is."""
    p = np.asarray(pvalues, float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if how == "none" or m == 0:
        out[idx] = p[idx]
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="mergesort")]
    ps = p[order]
    if how == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ps)
    else:
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ps)[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out.tolist()
