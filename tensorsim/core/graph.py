"""k-nearest-neighbour graphs on batched points, as tensor ops.

Convention everywhere (docs/SPEC.md §1 step 5): directed, self excluded, ordered by distance with ties to the
lower index. Squared Euclidean distance orders the same as Euclidean, so no sqrt is taken. All
backends compute distances in float32 with the same arithmetic, so they agree exactly, ties included.
"""
from __future__ import annotations

import torch

BACKENDS = ("torch", "triton", "faiss")


INT64_MAX = torch.iinfo(torch.int64).max


def pairwise_sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared distances in float32 as a plain loop over features (sum of squared differences; never
    |x|^2 + |y|^2 - 2xy, whose rounding makes identical points look apart). Bit-identical to the triton
    and faiss backends' arithmetic. x: [B, r, d], y: [B, c, d] -> [B, r, c] float32"""
    x, y = x.float(), y.float()
    acc = torch.zeros(x.shape[0], x.shape[1], y.shape[1], dtype=torch.float32, device=x.device)
    for f in range(x.shape[-1]):
        acc += (x[:, :, f, None] - y[:, None, :, f]).square()
    return acc


def sort_keys(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pack (distance, index) into one int64 whose integer order is the lexicographic order:
    non-negative float32 bit patterns order like the floats. dist: [...] float32, index: [...] -> int64"""
    return (dist.view(torch.int32).to(torch.int64) << 32) | index


def _topk_keys(best: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    merged = torch.cat([best, keys], dim=-1)
    return torch.topk(merged, min(k, merged.shape[-1]), dim=-1, largest=False, sorted=True).values


def _exact_rows(x: torch.Tensor, rows: torch.Tensor, row_idx: torch.Tensor, k: int, col_chunk: int) -> torch.Tensor:
    """Slow exact path: every column by the float32 feature loop. -> [B, r, k] keys"""
    B, r = rows.shape[:2]
    best = torch.empty(B, r, 0, dtype=torch.int64, device=x.device)
    for c0 in range(0, x.shape[1], col_chunk):
        cols = x[:, c0:c0 + col_chunk]
        col_idx = torch.arange(c0, c0 + cols.shape[1], device=x.device)
        keys = sort_keys(pairwise_sq_dist(rows, cols), col_idx)
        # self gets the largest key: never a neighbour, even next to distances of inf or NaN
        keys = keys.masked_fill(row_idx[:, None] == col_idx[None, :], INT64_MAX)
        best = _topk_keys(best, keys, k)
    return best


@torch.no_grad()
def knn_torch(x: torch.Tensor, k: int, row_chunk: int = 1024, col_chunk: int = 8192, margin: int = 8) -> torch.Tensor:
    """Indices of the k nearest other points of every point.
    x: [B, n, d] -> [B, n, k] (int64), nearest first, ties to the lower index.

    Exact, but fast: per tile of row_chunk rows, (1) shortlist k + 1 + margin candidates per row with
    the matmul form |x|^2 + |y|^2 - 2xy (BLAS speed, rounding error bounded), (2) recompute the
    shortlist's distances exactly (float32 feature loop, as every backend) and rank by packed
    (distance, index) keys, (3) rows whose k-th exact distance is not safely below the shortlist's
    last approximate distance, where an unlisted point might tie or win, are redone over all
    columns. Memory is O(B * row_chunk * col_chunk), never the n x n matrix."""
    B, n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < n={n}")
    x = x.float()
    sq = x.square().sum(-1)  # [B, n]
    width = min(n, k + 1 + margin)
    eps = torch.finfo(torch.float32).eps
    out = torch.empty(B, n, k, dtype=torch.int64, device=x.device)
    for r0 in range(0, n, row_chunk):
        rows = x[:, r0:r0 + row_chunk]  # [B, r, d]
        r = rows.shape[1]
        row_idx = torch.arange(r0, r0 + r, device=x.device)
        short_d = torch.empty(B, r, 0, device=x.device)
        short_i = torch.empty(B, r, 0, dtype=torch.int64, device=x.device)
        for c0 in range(0, n, col_chunk):
            c1 = min(n, c0 + col_chunk)
            approx = (sq[:, r0:r0 + r, None] + sq[:, None, c0:c1]
                      - 2 * rows @ x[:, c0:c1].transpose(1, 2)).clamp_min_(0)  # [B, r, c]
            d_all = torch.cat([short_d, approx], -1)
            i_all = torch.cat([short_i, torch.arange(c0, c1, device=x.device).expand(B, r, -1)], -1)
            short_d, j = torch.topk(d_all, min(width, d_all.shape[-1]), dim=-1, largest=False, sorted=True)
            short_i = torch.gather(i_all, -1, j)
        # exact distances of the shortlist, by the same feature loop as pairwise_sq_dist
        cand = torch.gather(x, 1, short_i.reshape(B, -1, 1).expand(-1, -1, d)).reshape(B, r, width, d)
        exact = torch.zeros(B, r, width, device=x.device)
        for f in range(d):
            exact += (rows[:, :, None, f] - cand[..., f]).square()
        keys = sort_keys(exact, short_i).masked_fill(short_i == row_idx[:, None], INT64_MAX)
        best = torch.topk(keys, k, dim=-1, largest=False, sorted=True).values
        # safety: an unlisted point's approximate distance is >= the shortlist's last one; its exact
        # distance is within err of that. Redo a row unless its k-th exact distance is below by 2*err.
        scale = sq[:, r0:r0 + r] + sq.max(-1, keepdim=True).values  # [B, r]
        err = (2 * d + 8) * eps * scale
        kth = ((best[..., -1] >> 32).to(torch.int32)).view(torch.float32)
        unsafe = (width < n) & ~(kth + 2 * err < short_d[..., -1])
        if bool(unsafe.any()):
            for b in unsafe.any(-1).nonzero().flatten().tolist():
                rows_b = unsafe[b].nonzero().flatten()
                best[b, rows_b] = _exact_rows(x[b:b + 1], rows[b:b + 1, rows_b], row_idx[rows_b], k, col_chunk)[0]
        out[:, r0:r0 + r] = best & 0xFFFFFFFF  # low 32 bits: the index
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
