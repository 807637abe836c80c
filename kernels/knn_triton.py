"""Fused Triton k-nearest-neighbour kernel (backend ``"triton"`` of :func:`tensorsim.core.graph.knn`).

Convention (same as ``tensorsim.core.graph.knn_torch``): for every point of every population, the indices
of the k nearest *other* points of the same population by Euclidean distance, nearest first, self
excluded, ties broken to the lower index.

Algorithm
---------
One program handles one population ``b`` and one block of ``BLOCK_M`` query rows. It keeps, in
registers, a running best list of ``K`` (padded to ``K_PAD``, a power of two) entries per row.
An entry is the pair ``(distance, index)`` packed into one int64 key, ``bits(distance) << 32 |
index``: squared distances are >= 0 (or +inf), and the bit patterns of non-negative floats order
like the floats, so integer order on keys is the lexicographic order -- smaller distance first,
then lower index -- and one min/max reduction finds the best/worst entry. The list starts with K
distinct sentinels, worse than every real point (also than a point at distance inf after float32
overflow), and is kept *unsorted*; only its worst entry (the maximum key) is tracked.

For each tile of ``BLOCK_N`` columns:

1. the ``[BLOCK_M, BLOCK_N]`` tile of squared distances is accumulated feature by feature,
   ``acc += (x_row[j] - x_col[j])**2`` for ``j = 0 .. d-1`` (any d, no n x n matrix ever exists);
   self pairs and columns past n get the key INT64_MAX, which never enters the list;
2. ``rounds`` = the largest (over rows) number of tile entries that beat the row's current worst,
   capped at K. Only those entries can enter the list;
3. ``rounds`` times: pop each row's best tile entry (min key); if it beats the row's worst list
   entry it replaces that entry, and the worst is recomputed.

After the last tile the list is sorted by K rounds of "extract the min key" and stored.
Once the list has filled with close neighbours, most tiles need zero rounds, so the cost is
dominated by the ``3 * d * BLOCK_M * BLOCK_N`` flops of the distance tiles.

Exactness: distances are float32 sums of squared differences (never the |x|^2 + |y|^2 - 2xy
trick, whose cancellation makes identical points look different), accumulated in feature order
with floating-point contraction (FMA) disabled, i.e. bit-identical to a sequential float32 loop
``for j in range(d): acc = acc + (a[j] - b[j]) ** 2`` -- the same numbers ``kernels.knn_faiss``
uses to rank its candidates. Exact ties therefore stay exact ties and are broken to the lower index.
(``knn_torch`` ranks by ``cdist(...)**2``: cdist's own summation order, then sqrt and square,
which can merge distances a few ulps apart, then tie-broken by index. So on continuous data
knn_torch may order two neighbours whose distances agree to float32 rounding differently from this
kernel, about 1 row in 10^4 at n=1e4, d=30; on data whose distances are exact, e.g. integer
coordinates, all backends agree.)

NaN coordinates are not supported (NaN distances make the ordering undefined).

Runs on CUDA tensors, or on CPU tensors when the environment variable ``TRITON_INTERPRET=1`` was set
before triton was first imported (the Triton interpreter: slow, for tests only). This module never
sets that variable.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

MAX_K = 128  # K_PAD = next power of two >= k; the [BLOCK_M, K_PAD] best list lives in registers
_INT32_MAX = 2**31 - 1
# Keys are int64: (float32 bits of the distance) << 32 | index. Distances are >= 0 (or +inf), whose
# bit patterns order like the floats, so integer order on keys is the (distance, index) order.
_SENTINEL_HI = tl.constexpr(_INT32_MAX << 32)  # above any finite or infinite distance: empty slot
_NO_KEY = tl.constexpr(2**63 - 1)  # self, past n, or already popped: never enters the list
_LOW32 = tl.constexpr(2**32 - 1)


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

    # Running best list of keys, unsorted: [BM, KP]. Real slots start as distinct sentinels
    # SENTINEL_HI | (n + slot), worse than every real point; padding slots hold -1 so that they are
    # never the row maximum (the worst entry, the one to replace).
    init = tl.where(slot_ok, (n + slot).to(tl.int64) | _SENTINEL_HI, -1)  # [KP]
    best = init[None, :] + tl.zeros([BLOCK_M, K_PAD], tl.int64)  # [BM, KP]
    worst = tl.max(best, axis=1)  # [BM]

    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)  # [BN]
        col_ok = cols < n  # [BN]

        # 1. squared distances of the tile, feature by feature: [BM, BN]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        xr_ptrs = x_base + rows  # [BM] pointers to feature 0 of the rows
        xc_ptrs = x_base + cols  # [BN] ... and of the columns
        for _j in range(0, d):
            xr = tl.load(xr_ptrs, mask=row_ok, other=0.0)  # [BM]
            xc = tl.load(xc_ptrs, mask=col_ok, other=0.0)  # [BN]
            diff = xr[:, None] - xc[None, :]  # [BM, BN]
            acc = acc + diff * diff
            xr_ptrs += n  # next feature (64-bit pointer arithmetic: no int32 overflow of j * n)
            xc_ptrs += n
        key = (acc.to(tl.int32, bitcast=True).to(tl.int64) << 32) | cols[None, :].to(tl.int64)  # [BM, BN]
        invalid = (rows[:, None] == cols[None, :]) | (~col_ok)[None, :]  # [BM, BN]: self or past n
        key = tl.where(invalid, _NO_KEY, key)

        # 2. how many tile entries beat the current worst (at most K of them can enter the list)
        n_beat = tl.sum((key < worst[:, None]).to(tl.int32), axis=1)  # [BM]
        n_beat = tl.where(row_ok, n_beat, 0)
        rounds = tl.max(tl.minimum(n_beat, K), axis=0)  # scalar

        # 3. pop the tile's best entry per row; it replaces the worst list entry if it beats it
        for _ in range(0, rounds):
            m = tl.min(key, axis=1)  # [BM]
            key = tl.where(key == m[:, None], _NO_KEY, key)  # keys are unique within a row
            repl = (m < worst)[:, None] & (best == worst[:, None])  # [BM, KP], one slot at most
            best = tl.where(repl, m[:, None], best)
            worst = tl.max(best, axis=1)

    # Sort the list: K rounds of extracting the minimum key, whose low 32 bits are the index.
    best = tl.where(slot_ok[None, :], best, _NO_KEY)
    for r in range(0, K):
        m = tl.min(best, axis=1)  # [BM]
        tl.store(out_base + rows.to(tl.int64) * K + r, m & _LOW32, mask=row_ok)
        best = tl.where(best == m[:, None], _NO_KEY, best)


def _interpreting() -> bool:
    """Whether the kernel was defined under the interpreter (TRITON_INTERPRET=1 at import time)."""
    return type(_knn_kernel).__name__ == "InterpretedFunction"


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
    # Triton launches on the current CUDA device: make it x's (x on cuda:1 while cuda:0 is current)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _knn_kernel[grid](
            xt, out, n, d,
            K=k, K_PAD=k_pad, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=num_warps or 4,
            enable_fp_fusion=False,  # acc + diff * diff rounded twice, like the sequential reference
        )
    return out
