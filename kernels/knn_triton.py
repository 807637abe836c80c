"""Fused Triton k-nearest-neighbour kernel (backend ``"triton"`` of :func:`tensorsim.graph.knn`).

Convention (same as ``tensorsim.graph.knn_torch``): for every point of every population, the indices
of the k nearest *other* points of the same population by Euclidean distance, nearest first, self
excluded, ties broken to the lower index.

Algorithm
---------
One program handles one population ``b`` and one block of ``BLOCK_M`` query rows. It keeps, in
registers, a running best list of ``K`` (padded to ``K_PAD``, a power of two) entries per row:
pairs ``(distance, index)`` compared lexicographically, so "better" means smaller distance, or equal
distance and lower index. The list starts with K sentinels ``(inf, n + slot)`` that lose to every
real point (also to a real point at distance inf after overflow), and is kept *unsorted*; only its
worst entry (the lexicographic max) is tracked.

For each tile of ``BLOCK_N`` columns:

1. the ``[BLOCK_M, BLOCK_N]`` tile of squared distances is accumulated feature by feature,
   ``acc += (x_row[j] - x_col[j])**2`` for ``j = 0 .. d-1`` (any d, no n x n matrix ever exists);
   self pairs and columns past n become ``(inf, INT32_MAX)``, which never enter the list;
2. ``rounds`` = the largest (over rows) number of tile entries that beat the row's current worst,
   capped at K. Only those entries can enter the list;
3. ``rounds`` times: pop each row's best tile entry; if it beats the row's worst list entry it
   replaces that entry, and the worst is recomputed.

After the last tile the list is sorted by K rounds of "extract the lexicographic min" and stored.
Once the list has filled with close neighbours, most tiles need zero rounds, so the cost is
dominated by the ``3 * d * BLOCK_M * BLOCK_N`` flops of the distance tiles.

Exactness: distances are float32 sums of squared differences (never the |x|^2 + |y|^2 - 2xy
trick, whose cancellation makes identical points look different), accumulated in feature order
with floating-point contraction (FMA) disabled, i.e. bit-identical to a sequential float32 loop
``for j in range(d): acc = acc + (a[j] - b[j]) ** 2`` -- the same numbers ``kernels.knn_faiss``
uses to rank its candidates. Exact ties therefore stay exact ties and are broken to the lower index.
(``knn_torch`` on CPU computes ``cdist(...)**2``, i.e. the same sum passed through sqrt and square;
that rounding can merge two distances that differ in the last bits, which then tie-break by index.)

NaN coordinates are not supported (NaN distances make the ordering undefined).

Runs on CUDA tensors, or on CPU tensors when the environment variable ``TRITON_INTERPRET=1`` was set
before triton was first imported (the Triton interpreter: slow, for tests only). This module never
sets that variable.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MAX_K = 128  # K_PAD = next power of two >= k; the two [BLOCK_M, K_PAD] lists live in registers
_INT32_MAX = 2**31 - 1


@triton.jit
def _knn_kernel(
    xt_ptr,  # float32 [B, d, n], contiguous (features-major, so loads of one feature are coalesced)
    out_ptr,  # int64 [B, n, K], contiguous
    n,
    d,
    K: tl.constexpr,  # neighbours per row
    K_PAD: tl.constexpr,  # next power of two >= K
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # columns per tile
):
    pid_b = tl.program_id(0)  # population
    pid_m = tl.program_id(1)  # row block
    x_base = xt_ptr + pid_b.to(tl.int64) * d * n
    out_base = out_ptr + pid_b.to(tl.int64) * n * K

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_ok = rows < n  # [BM]
    slot = tl.arange(0, K_PAD)  # [KP]
    slot_ok = slot < K  # [KP]; slots >= K are padding and never hold an entry

    # Running best list, unsorted. Real slots start as sentinels (inf, n + slot): distinct, and worse
    # than every real point. Padding slots hold (-inf, -1) and are masked out of every max/min below.
    best_d = tl.where(slot_ok, float("inf"), float("-inf"))[None, :] + tl.zeros([BLOCK_M, K_PAD], tl.float32)
    best_i = tl.where(slot_ok, n + slot, -1)[None, :] + tl.zeros([BLOCK_M, K_PAD], tl.int32)
    # The worst real entry (lexicographic max) of each row: [BM], [BM]
    worst_d = tl.max(tl.where(slot_ok[None, :], best_d, float("-inf")), axis=1)
    worst_i = tl.max(tl.where(slot_ok[None, :] & (best_d == worst_d[:, None]), best_i, -1), axis=1)

    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)  # [BN]
        col_ok = cols < n  # [BN]

        # 1. squared distances of the tile, feature by feature: [BM, BN]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for j in range(0, d):
            xr = tl.load(x_base + j * n + rows, mask=row_ok, other=0.0)  # [BM]
            xc = tl.load(x_base + j * n + cols, mask=col_ok, other=0.0)  # [BN]
            diff = xr[:, None] - xc[None, :]  # [BM, BN]
            acc = acc + diff * diff
        invalid = (rows[:, None] == cols[None, :]) | (~col_ok)[None, :]  # [BM, BN]: self or past n
        tile_d = tl.where(invalid, float("inf"), acc)  # [BM, BN]
        tile_i = tl.where(invalid, _INT32_MAX, cols[None, :] + tl.zeros([BLOCK_M, BLOCK_N], tl.int32))

        # 2. how many tile entries beat the current worst (at most K of them can enter the list)
        beats = (tile_d < worst_d[:, None]) | ((tile_d == worst_d[:, None]) & (tile_i < worst_i[:, None]))
        n_beat = tl.where(row_ok, tl.sum(beats.to(tl.int32), axis=1), 0)  # [BM]
        rounds = tl.max(tl.minimum(n_beat, K), axis=0)  # scalar

        # 3. pop the tile's best entry per row; it replaces the worst list entry if it beats it
        for _ in range(0, rounds):
            m_d = tl.min(tile_d, axis=1)  # [BM]
            m_i = tl.min(tl.where(tile_d == m_d[:, None], tile_i, _INT32_MAX), axis=1)  # [BM]
            # column indices are unique within a tile (INT32_MAX entries are never popped as winners)
            tile_d = tl.where(tile_i == m_i[:, None], float("inf"), tile_d)
            tile_i = tl.where(tile_i == m_i[:, None], _INT32_MAX, tile_i)
            better = (m_d < worst_d) | ((m_d == worst_d) & (m_i < worst_i))  # [BM]
            # list indices are unique (sentinels n + slot, real indices once), so this is one slot
            repl = better[:, None] & (best_i == worst_i[:, None])  # [BM, KP]
            best_d = tl.where(repl, m_d[:, None], best_d)
            best_i = tl.where(repl, m_i[:, None], best_i)
            worst_d = tl.max(tl.where(slot_ok[None, :], best_d, float("-inf")), axis=1)
            worst_i = tl.max(tl.where(slot_ok[None, :] & (best_d == worst_d[:, None]), best_i, -1), axis=1)

    # Sort the list: K rounds of extracting the lexicographic min, written straight to the output.
    best_d = tl.where(slot_ok[None, :], best_d, float("inf"))
    best_i = tl.where(slot_ok[None, :], best_i, _INT32_MAX)
    for r in range(0, K):
        m_d = tl.min(best_d, axis=1)  # [BM]
        m_i = tl.min(tl.where(best_d == m_d[:, None], best_i, _INT32_MAX), axis=1)  # [BM]
        tl.store(out_base + rows.to(tl.int64) * K + r, m_i.to(tl.int64), mask=row_ok)
        taken = best_i == m_i[:, None]  # [BM, KP]
        best_d = tl.where(taken, float("inf"), best_d)
        best_i = tl.where(taken, _INT32_MAX, best_i)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def knn_triton(x: torch.Tensor, k: int, *, block_m: int | None = None, block_n: int | None = None,
               num_warps: int | None = None) -> torch.Tensor:
    """Indices of the k nearest other points of every point, by the fused kernel above.

    x: [B, n, d] (cast to float32) -> int64 [B, n, k], nearest first, ties to the lower index.
    Requires 1 <= k < n and k <= MAX_K (128). block_m / block_n (powers of two) override the tile
    sizes, e.g. for tests; by default 64 x 64 (32 rows when k > 64, to bound registers)."""
    if x.dim() != 3:
        raise ValueError(f"x must be [B, n, d], got shape {tuple(x.shape)}")
    B, n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < n={n}")
    if k > MAX_K:
        raise ValueError(f"k={k} exceeds the triton backend's maximum MAX_K={MAX_K}; use backend 'torch' or 'faiss'")
    if d < 1:
        raise ValueError(f"x must have at least one feature, got d={d}")
    k_pad = triton.next_power_of_2(k)
    if n + k_pad >= _INT32_MAX:
        raise ValueError(f"n={n} too large for int32 indices in the triton backend")
    if not x.is_cuda and not _interpreting():
        raise RuntimeError("knn_triton needs a CUDA tensor, or TRITON_INTERPRET=1 set before triton is imported")
    block_m = block_m or (64 if k_pad <= 64 else 32)
    block_n = block_n or 64
    for name, v in (("block_m", block_m), ("block_n", block_n)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name}={v} must be a power of two")

    xt = x.detach().to(torch.float32).transpose(1, 2).contiguous()  # [B, d, n]
    out = torch.empty(B, n, k, dtype=torch.int64, device=x.device)
    if B == 0:
        return out
    grid = (B, triton.cdiv(n, block_m))
    _knn_kernel[grid](
        xt, out, n, d,
        K=k, K_PAD=k_pad, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps or 4,
        enable_fp_fusion=False,  # acc + diff * diff rounded twice, like the sequential reference
    )
    return out
