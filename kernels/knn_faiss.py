"""k-nearest neighbours with faiss (backend ``"faiss"`` of :func:`tensorsim.core.graph.knn`).

Convention (same as ``tensorsim.core.graph.knn_torch``): for every point of every population, the indices
of the k nearest *other* points of the same population by Euclidean distance, nearest first, self
excluded, ties broken to the lower index.

faiss is used only to *propose* candidates; the answer is then made exact:

1. one exact flat L2 index (``IndexFlatL2``, or ``GpuIndexFlatL2`` when x is on CUDA and faiss was
   built with GPU support) per population, over the population centred on its mean (distances do
   not change; centring shrinks the norms that bound faiss's rounding error);
2. search ``K' = k + 1 + margin`` candidates per point: faiss computes |q|^2 + |y|^2 - 2<q, y>,
   whose rounding can reorder near-equal distances, make duplicates look distinct, and break ties
   in any order; self is (usually) among the results;
3. recompute the candidates' squared distances exactly as the triton backend does (float32,
   ``sum_j (x_q[j] - x_c[j])**2`` accumulated in feature order), drop self, and sort by
   (distance, index);
4. certify each row: every point faiss did not return has faiss distance >= the K'-th returned
   one, ``f_last``, hence exact distance >= f_last - tol, where tol is a worst-case bound on faiss's
   rounding error (from the dimension and the centred norms, times a safety factor of 2). If
   ``f_last - tol`` is not strictly above the k-th exact distance, some point outside the candidates
   could tie with or beat the k-th neighbour (e.g. many points at exactly the same distance, or
   duplicates), so the row is searched again with K' doubled; past ``_MAX_SEARCH_K`` candidates
   (or K' >= n) the row is finished by brute force over all n points.

Steps 3-4 run in numpy on the CPU (also for CUDA inputs, whose points are copied to the host for
faiss anyway): numpy is single-threaded, whereas torch's CPU ops fight faiss's separate OpenMP
runtime for the cores (measured 10-25x slowdowns on 2 cores when the recompute used torch ops).

So the result does not depend on faiss's tie order or rounding: it equals the brute-force answer
for the float32 feature-order distances (bit-identical to ``kernels.knn_triton``). The cost of
exactness is extra searches only for rows whose k-th neighbour is (nearly) tied with points beyond
the margin. Points far from the others (huge norms after centring) inflate tol and can send rows to
brute force; NaN coordinates are not supported.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch

_U = 2.0**-24  # unit roundoff of float32
_MAX_SEARCH_K = 1024  # widest faiss search before brute force (faiss GPU caps k at 1024 or 2048)
_gpu_resources = None


def _has_faiss_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _make_index(d: int, device: torch.device):
    """Exact flat L2 index, on the GPU of `device` when possible."""
    global _gpu_resources
    if device.type == "cuda" and _has_faiss_gpu():
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = device.index if device.index is not None else torch.cuda.current_device()
        return faiss.GpuIndexFlatL2(_gpu_resources, d, cfg)
    return faiss.IndexFlatL2(d)


def _sq_dist_seq(xt: np.ndarray, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances, float32, accumulated feature by feature (the triton kernel's numbers).
    xt: [d, n] float32; q: [r] query indices; c: [r, m] or [m] candidate indices -> [r, m]"""
    acc = None
    with np.errstate(over="ignore"):  # huge coordinates: inf distances are ranked like any other
        for f in xt:  # f: [n], one feature
            sq = np.square(f[q][:, None] - f[c])
            acc = sq if acc is None else acc + sq
    return acc


def _select(cand: np.ndarray, dist: np.ndarray, q: np.ndarray, k: int):
    """Sort candidates by (distance, index), self last, and keep k.
    cand: [r, m] int64 (unique per row), dist: [r, m], q: [r] -> indices [r, k], distances [r, k]"""
    o = np.argsort(cand, axis=1)  # by index ...
    cand, dist = np.take_along_axis(cand, o, 1), np.take_along_axis(dist, o, 1)
    o = np.argsort(dist, axis=1, kind="stable")  # ... then stably by distance
    cand, dist = np.take_along_axis(cand, o, 1), np.take_along_axis(dist, o, 1)
    is_self = (cand == q[:, None]).astype(np.int8)  # self last, even among distances that overflowed to inf
    o = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, o, 1), np.take_along_axis(dist, o, 1)


def _brute_force(xt: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact neighbours of the rows q against all n points. xt: [d, n], q: [r] -> [r, k]"""
    n = xt.shape[1]
    cols = np.arange(n)
    chunk = max(1, (1 << 22) // n)
    out = [_select(np.broadcast_to(cols, (qs.size, n)), _sq_dist_seq(xt, qs, cols), qs, k)[0]
           for qs in (q[s:s + chunk] for s in range(0, q.size, chunk))]
    return np.concatenate(out) if out else np.empty((0, k), dtype=np.int64)


def _knn_one(xb: np.ndarray, k: int, margin: int, device: torch.device) -> np.ndarray:
    """One population. xb: [n, d] float32 -> [n, k] int64"""
    n, d = xb.shape
    xt = np.ascontiguousarray(xb.T)  # [d, n]
    rows = np.arange(n)
    m = k + 1 + margin
    if m >= n:  # faiss would return every point anyway
        return _brute_force(xt, rows, k)

    out = np.empty((n, k), dtype=np.int64)
    xc64 = xb.astype(np.float64)
    xc64 -= xc64.mean(axis=0)
    xc = np.ascontiguousarray(xc64, dtype=np.float32)  # [n, d], what faiss sees
    norm2 = np.einsum("ij,ij->i", xc64, xc64)  # [n] float64
    index = _make_index(d, device)
    index.add(xc)
    # |f - exact| <= c_f * u * (|q|^2 + |y|^2) for faiss (dot product, norms, centring, final sums),
    # and the float32 recompute is within (d + 3) u of the true distance; both doubled for safety.
    c_f = 2.0 * (2 * d + 10) * _U
    c_e = 2.0 * (d + 3) * _U
    max_norm2 = float(norm2.max())

    todo = rows  # rows not yet certified
    while todo.size:
        if m >= n or m > _MAX_SEARCH_K:
            out[todo] = _brute_force(xt, todo, k)
            break
        f, cand = index.search(xc[todo], m)  # [r, m] each: faiss's distances (ascending), indices
        assert (cand >= 0).all(), "faiss returned fewer candidates than requested"
        dist = _sq_dist_seq(xt, todo, cand)  # [r, m] exact
        best, best_d = _select(cand, dist, todo, k)
        lower = (f[:, -1].astype(np.float64) - c_f * (norm2[todo] + max_norm2)) / (1.0 + c_e)
        ok = lower > best_d[:, -1]  # every point not returned is strictly farther than the k-th neighbour
        out[todo[ok]] = best[ok]
        todo = todo[~ok]
        m *= 2
    return out


def knn_faiss(x: torch.Tensor, k: int, margin: int | None = None) -> torch.Tensor:
    """Indices of the k nearest other points of every point, via faiss plus exact post-processing.

    x: [B, n, d] (cast to float32) -> int64 [B, n, k] on x's device, nearest first, ties to the lower
    index. Requires 1 <= k < n. margin: extra candidates searched beyond k + 1 (default max(8, k))."""
    if x.dim() != 3:
        raise ValueError(f"x must be [B, n, d], got shape {tuple(x.shape)}")
    B, n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < n={n}")
    if d < 1:
        raise ValueError(f"x must have at least one feature, got d={d}")
    margin = max(8, k) if margin is None else margin
    if margin < 0:
        raise ValueError(f"margin={margin} must be >= 0")
    xf = x.detach().to(device="cpu", dtype=torch.float32).numpy()  # [B, n, d]
    out = np.stack([_knn_one(xf[b], k, margin, x.device) for b in range(B)]) if B else np.empty((0, n, k), np.int64)
    return torch.from_numpy(out).to(x.device)
