"""k-nearest-neighbour graphs on batched points, as tensor ops.

Convention everywhere (SPEC §1 step 5): directed, self excluded, ordered by distance with ties to the
lower index. Squared Euclidean distance orders the same as Euclidean, so no sqrt is taken.
"""
from __future__ import annotations

import torch

BACKENDS = ("torch", "triton", "faiss")


def pairwise_sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact squared distances by differences (not the |x|^2+|y|^2-2xy trick, whose rounding makes
    identical points look different and breaks exact ties).
    x: [B, n, d], y: [B, m, d] -> [B, n, m]"""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square()


def _merge_topk(best_d, best_i, cand_d, cand_i, k):
    """Keep the k smallest of (best ∪ cand) by (distance, index). Stable sort on the concatenation keeps
    the earlier entry first on equal distance; earlier entries have lower indices when candidates
    arrive in increasing column order."""
    d = torch.cat([best_d, cand_d], dim=-1)
    i = torch.cat([best_i, cand_i], dim=-1)
    d, order = torch.sort(d, dim=-1, stable=True)
    return d[..., :k], torch.gather(i, -1, order[..., :k])


def knn_torch(x: torch.Tensor, k: int, row_chunk: int = 1024, col_chunk: int = 8192) -> torch.Tensor:
    """Indices of the k nearest other points of every point.
    x: [B, n, d] -> [B, n, k] (int64), nearest first.
    Works in tiles of row_chunk rows against col_chunk columns with a running top-k, so memory is
    O(B * row_chunk * (col_chunk + k)) and never the full n x n matrix."""
    B, n, _ = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < n={n}")
    out = torch.empty(B, n, k, dtype=torch.int64, device=x.device)
    for r0 in range(0, n, row_chunk):
        rows = x[:, r0:r0 + row_chunk]  # [B, r, d]
        r = rows.shape[1]
        row_idx = torch.arange(r0, r0 + r, device=x.device)
        best_d = torch.full((B, r, 0), float("inf"), dtype=x.dtype, device=x.device)
        best_i = torch.empty((B, r, 0), dtype=torch.int64, device=x.device)
        for c0 in range(0, n, col_chunk):
            cols = x[:, c0:c0 + col_chunk]
            d = pairwise_sq_dist(rows, cols)  # [B, r, c]
            col_idx = torch.arange(c0, c0 + cols.shape[1], device=x.device)
            d = d.masked_fill(row_idx[:, None] == col_idx[None, :], float("inf"))  # self is never a neighbour
            best_d, best_i = _merge_topk(best_d, best_i, d, col_idx.expand(B, r, -1), k)
        out[:, r0:r0 + r] = best_i
    return out


def knn(x: torch.Tensor, k: int, backend: str = "torch", **kw) -> torch.Tensor:
    """Dispatch to a neighbour backend. x: [B, n, d] -> [B, n, k]."""
    if backend == "torch":
        return knn_torch(x, k, **kw)
    if backend == "triton":
        from kernels.knn_triton import knn_triton
        return knn_triton(x, k)
    if backend == "faiss":
        from kernels.knn_faiss import knn_faiss
        return knn_faiss(x, k)
    raise ValueError(f"graph.backend={backend!r} is not one of {', '.join(BACKENDS)}")
