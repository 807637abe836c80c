"""Exact k-nearest neighbours in float64 for mixture weights (the GMM proxy's neighbour search).

float32 backends (tensorsim.graph) cannot separate near-one-hot weights that differ by ~1e-8; these
functions compute squared distances in float64 in feature order, ties to the lower index:
  knn_brute   all pairs in blocks: small n, many packed populations
  knn_pruned  exact duplicates merged first (weights pile up on identical clipped one-hot vectors),
              then kd leaves with box pruning under a checked rounding-error bound: large n
"""
from __future__ import annotations

import math

import torch

from ..core import rng


def sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared distances accumulated in feature order (bitwise independent of tensor shapes).
    a [..., d], b [..., d] broadcast -> [...]"""
    out = None
    for f in range(a.shape[-1]):
        s = (a[..., f] - b[..., f]).square()
        out = s if out is None else out + s
    return out


def _select_k(ex: torch.Tensor, kh: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kh smallest of every row of ex [u, h] by (value, column), column ascending on ties.
    -> (values [u, kh], columns [u, kh]) sorted by (value, column)."""
    kth = torch.topk(ex, kh, -1, largest=False).values.amax(-1, keepdim=True)
    lt = ex < kth
    eq = ex == kth
    need = kh - lt.sum(-1, keepdim=True)
    take = lt | (eq & (eq.cumsum(-1) <= need))
    col = take.nonzero()[:, 1].reshape(ex.shape[0], kh)  # row-major: columns ascending
    val = ex.gather(-1, col)
    val, order = torch.sort(val, dim=-1, stable=True)
    return val, col.gather(-1, order)


class _Leaf:
    def __init__(self, idx: torch.Tensor, pts: torch.Tensor, pop: int):
        self.idx = idx  # [h] flat indices, ascending
        self.pts = pts  # [h, d]
        self.pop = pop
        self.lo = pts.amin(0)
        self.hi = pts.amax(0)
        self.constant = bool((self.lo == self.hi).all())
        self.centre = pts.mean(0)
        self.c = pts - self.centre
        self.norm = self.c.square().sum(-1)


# rounding bound of |a|^2 + |b|^2 - 2 a.b against the true squared distance, in units of (|a|+|b|)^2
def _tol(d: int, dtype) -> float:
    return 2.0 * (d + 4) * torch.finfo(dtype).eps


def _leaf_knn(a, a_idx, leaf: _Leaf, own: bool, k: int, margin: int):
    """Exact kh = min(k, points of leaf other than self) nearest of each row of a [u, d] (flat indices
    a_idx [u]) within leaf, by (squared distance, index). -> (dist [u, kh], flat index [u, kh])."""
    h = leaf.idx.numel()
    h_eff = h - 1 if own else h
    kh = min(k, h_eff)
    u = a.shape[0]
    if kh <= 0:
        return a.new_empty(u, 0), a_idx.new_empty(u, 0)
    kk = min(kh + margin, h_eff)
    self_mask = (a_idx[:, None] == leaf.idx[None, :]) if own else None

    def full(rows):
        if leaf.constant and own:  # every pair of identical points is exactly 0 apart
            ex = a.new_zeros(rows.numel(), h)
        else:
            ex = sqdist(a[rows, None, :], leaf.pts[None, :, :])
        if own:
            ex = ex.masked_fill(self_mask[rows], float("inf"))
        return _select_k(ex, kh)

    if kk >= h_eff or h <= 64:
        val, col = full(torch.arange(u, device=a.device))
        return val, leaf.idx[col]
    # screen with the matrix-product form on centred points, certify, recompute exactly
    ac = a - leaf.centre
    na = ac.square().sum(-1)
    approx = na[:, None] + leaf.norm[None, :] - 2.0 * (ac @ leaf.c.T)
    tol = _tol(a.shape[-1], a.dtype) * (na.sqrt()[:, None] + leaf.norm.sqrt()[None, :]).square()
    lower = approx - tol  # <= every true squared distance (and <= its exactly computed value)
    if own:
        lower = lower.masked_fill(self_mask, float("inf"))
    lv, cand = torch.topk(lower, kk, -1, largest=False)
    thresh = lv.amax(-1)  # every point outside cand has lower >= thresh
    cand, _ = torch.sort(cand, -1)  # columns ascending, so a stable sort by distance breaks ties by index
    ex = sqdist(a[:, None, :], leaf.pts[cand])  # [u, kk]
    ex, order = torch.sort(ex, dim=-1, stable=True)
    val, col = ex[:, :kh], cand.gather(-1, order[:, :kh])
    bad = ~(thresh > val[:, -1])  # something outside the candidates could tie or beat the kh-th
    if bad.any():
        rows = bad.nonzero().flatten()
        v2, c2 = full(rows)
        val = val.index_put((rows,), v2)
        col = col.index_put((rows,), c2)
    return val, leaf.idx[col]


def _merge(D, I, d, i, k):
    """Running (D, I) [u, k] and new (d, i) -> the k smallest by (distance, index)."""
    dd = torch.cat([D, d], -1)
    ii = torch.cat([I, i], -1)
    ii, o = torch.sort(ii, -1)
    dd = dd.gather(-1, o)
    dd, o = torch.sort(dd, dim=-1, stable=True)
    return dd[:, :k], ii.gather(-1, o[:, :k])


def _knn_flat(X, pop, groups, k, leaf_size, margin, budget):
    """Core of knn_pruned on flat points X [N, d] of populations pop [N] (points of different populations
    never meet) -> (dist [N, k], index [N, k]) by (squared distance, index); where a population has fewer
    than k other points the tail is (inf, N)."""
    N, d = X.shape
    dev = X.device
    key = pop if groups is None else pop * (int(groups.max()) + 1) + groups
    order = torch.argsort(key, stable=True)
    counts = torch.unique_consecutive(key[order], return_counts=True)[1].tolist()
    todo = list(order.split(counts))
    leaves: list[_Leaf] = []
    while todo:
        g = todo.pop()
        pts = X[g]
        span = pts.amax(0) - pts.amin(0)
        if g.numel() <= leaf_size or not bool((span > 0).any()):
            leaves.append(_Leaf(g, pts, int(pop[g[0]])))
            continue
        o = torch.argsort(pts[:, int(span.argmax())], stable=True)
        half = g.numel() // 2
        todo.append(torch.sort(g[o[:half]]).values)
        todo.append(torch.sort(g[o[half:]]).values)
    out_d = torch.empty(N, k, dtype=X.dtype, device=dev)
    out_i = torch.empty(N, k, dtype=torch.int64, device=dev)
    lo = torch.stack([lf.lo for lf in leaves])  # [L, d]
    hi = torch.stack([lf.hi for lf in leaves])
    leaf_pop = torch.tensor([lf.pop for lf in leaves], device=dev)
    big = max(lf.idx.numel() for lf in leaves)
    for li, leaf in enumerate(leaves):
        same = (leaf_pop == leaf.pop).nonzero().flatten()
        same = same[same != li]
        rc = max(1, budget // max(big, same.numel() * d, 1))
        for r0 in range(0, leaf.idx.numel(), rc):
            a = leaf.pts[r0:r0 + rc]
            a_idx = leaf.idx[r0:r0 + rc]
            u = a.shape[0]
            Dr, Ir = _leaf_knn(a, a_idx, leaf, True, k, margin)
            if Dr.shape[1] < k:  # pad: fewer than k others in the own leaf
                pad = k - Dr.shape[1]
                Dr = torch.cat([Dr, Dr.new_full((u, pad), math.inf)], -1)
                Ir = torch.cat([Ir, Ir.new_full((u, pad), N)], -1)
            if same.numel():
                gap = (lo[same][None] - a[:, None]).clamp_min(0) + (a[:, None] - hi[same][None]).clamp_min(0)
                lb = gap.square().sum(-1) * (1.0 - 1e-9)  # [u, S] <= every distance into that leaf
                for s in torch.argsort(lb.amin(0)).tolist():
                    need = lb[:, s] <= Dr[:, -1]
                    if not bool(need.any()):
                        continue
                    rows = need.nonzero().flatten()
                    dv, iv = _leaf_knn(a[rows], a_idx[rows], leaves[int(same[s])], False, k, margin)
                    Dm, Im = _merge(Dr[rows], Ir[rows], dv, iv, k)
                    Dr = Dr.index_put((rows,), Dm)
                    Ir = Ir.index_put((rows,), Im)
            out_d[a_idx] = Dr
            out_i[a_idx] = Ir
    return out_d, out_i


def knn_pruned(x: torch.Tensor, k: int, argmax_groups: bool = False, leaf_size: int = 1024, margin: int = 8,
               budget: int = 1 << 22) -> torch.Tensor:
    """Exact k nearest other points of every point, like graph.knn: x [B, n, d] -> [B, n, k], ordered by
    (squared distance, index), distances accumulated in feature order (sqdist). Memory: O(leaf_size^2 +
    B n k), never n x n.

    1. Exact duplicates are merged (GMM weights pile up on the same clipped one-hot vectors): a point with
       at least k duplicates has as neighbours its k lowest-index duplicates (distance 0); the others take
       all their duplicates and search the distinct points ("uniques") for the rest.
    2. Uniques are split into leaves recursively at the median of the widest coordinate until a leaf
       holds <= leaf_size points (argmax_groups: first by each point's argmax; many tiny leaves cost
       Python overhead, so it is off by default). Each leaf is searched against itself,
       then against the other leaves of its population in order of bounding-box distance, skipping a leaf
       for every row whose current k-th distance is below the leaf's box distance. Within a leaf pair,
       candidates come from the matrix-product form of the distance, which a rigorous rounding bound
       certifies; uncertified rows (ties, near-ties) are searched exhaustively.
    3. A unique's neighbour uniques are expanded into their members (lowest indices first); where uniques
       tie at the boundary distance beyond the searched list, that row is searched exhaustively."""
    B, n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < n={n}")
    dev = x.device
    N = B * n
    X = x.reshape(N, d)
    pop = torch.arange(B, device=dev).repeat_interleave(n)
    upop, ux, inv, cnt = _unique_rows(X, pop)
    nU = ux.shape[0]
    order = torch.argsort(inv, stable=True)  # members of every unique, ascending, uniques one after another
    start = torch.cumsum(cnt, 0) - cnt
    pos = torch.arange(k + 1, device=dev)
    first = torch.where(pos[None] < cnt[:, None], order[(start[:, None] + pos[None]).clamp_max(N - 1)], N)  # [nU, k+1]
    agent = torch.arange(N, device=dev)
    dups = first[inv]  # [N, k+1] the k+1 lowest-index members of each agent's unique (N padded)
    dups = torch.sort(torch.where(dups == agent[:, None], N, dups), -1).values[:, :k]  # self removed
    n_dup = (cnt[inv] - 1).clamp_max(k)  # [N]
    need = (k - (cnt - 1)).clamp_min(0)  # [nU] neighbours each unique's members still need elsewhere
    rest = torch.full((nU, k), N, dtype=torch.int64, device=dev)
    todo = (need > 0).nonzero().flatten()
    if todo.numel():
        K = k + margin
        dist, nbr = _knn_flat(ux, upop, ux.argmax(-1) if argmax_groups else None, K, leaf_size, margin, budget)
        if bool((dist[:, 0] == 0).any()):  # distinct points at distance 0 (underflow): no dedup shortcut
            return _knn_flat(X, pop, X.argmax(-1) if argmax_groups else None, k, leaf_size, margin,
                             budget)[1].reshape(B, n, k) - (torch.arange(B, device=dev) * n)[:, None, None]
        dist, nbr = dist[todo], nbr[todo]
        valid = nbr < nU
        ccount = torch.cumsum(torch.where(valid, cnt[nbr.clamp_max(nU - 1)], 0), -1)  # [V, K]
        nv = need[todo]
        at = (ccount < nv[:, None]).sum(-1)  # first position whose cumulative count reaches need
        ok_at = at < K
        r_star = dist.gather(-1, at.clamp_max(K - 1)[:, None]).squeeze(-1)
        others = torch.bincount(upop, minlength=B)[upop[todo]] - 1  # other uniques in the population
        complete = (valid.sum(-1) >= others) & ok_at  # the list holds every other unique
        certified = complete | (ok_at & (dist[:, -1] > r_star))
        r_star = torch.where(ok_at, r_star, math.inf)
        # expand candidate uniques (distance <= r*) into their first k members and keep the best `need`
        cand_u = torch.where(valid & (dist <= r_star[:, None]), nbr, nU)  # [V, K]
        rest[todo] = _expand(cand_u, dist, first, nU, N, k)
        bad = (~certified).nonzero().flatten()
        for v_local in bad.tolist():  # boundary ties beyond the list (rare): every unique of the population
            v = int(todo[v_local])
            members = (upop == upop[v]).nonzero().flatten()
            ex = sqdist(ux[v][None], ux[members]).masked_fill(members == v, math.inf)
            nvv = int(need[v])
            srt, o = torch.sort(ex, stable=True)
            reach = torch.cumsum(cnt[members[o]], 0)
            r = srt[int((reach < nvv).sum())]
            sel = members[ex <= r]
            rest[v] = _expand(sel[None], ex[ex <= r][None], first, nU, N, k)[0]
    # agent i: its duplicates (distance 0, ascending) then its unique's `rest`
    slot = torch.arange(k, device=dev)[None]
    from_rest = rest[inv].gather(-1, (slot - n_dup[:, None]).clamp_min(0))
    out = torch.where(slot < n_dup[:, None], dups, from_rest)
    return out.reshape(B, n, k) - (torch.arange(B, device=dev) * n)[:, None, None]


def knn_brute(x: torch.Tensor, k: int, budget: int = 1 << 22) -> torch.Tensor:
    """Exact k nearest other points by brute force, same arithmetic and order as knn_pruned (float64
    sqdist, ties to the lower index): x [B, n, d] -> [B, n, k]. For small n and many packed populations;
    memory O(budget), rows in chunks."""
    B, n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < n={n}")
    out = torch.empty(B, n, k, dtype=torch.int64, device=x.device)
    rc = max(1, budget // max(1, B * n))
    col = torch.arange(n, device=x.device)
    xt = x.transpose(1, 2).contiguous()  # [B, d, n]: each feature's values contiguous
    for r0 in range(0, n, rc):
        r1 = min(n, r0 + rc)
        ex = torch.zeros(B, r1 - r0, n, dtype=x.dtype, device=x.device)
        for f in range(d):  # the arithmetic of sqdist: squares added in feature order
            ex += (xt[:, f, r0:r1, None] - xt[:, f, None, :]).square_()
        ex = ex.masked_fill(torch.arange(r0, r1, device=x.device)[:, None] == col[None, :], math.inf)
        out[:, r0:r1] = _select_k(ex.reshape(-1, n), k)[1].reshape(B, r1 - r0, k)
    return out


def _unique_rows(X, pop):
    """Distinct rows of X [N, d] within each population pop [N] (bitwise equality).
    -> (population [U], rows [U, d], inverse [N], counts [U])
    A 64-bit hash of each row's bits finds the candidates with one 1-D unique; every row is then compared
    with its group's first row, so a hash collision only costs the exact (slower) torch.unique(dim=0)."""
    N, d = X.shape
    bits = (X + 0.0).contiguous().view(torch.int64) if X.dtype == torch.float64 else X.double().view(torch.int64)
    h = rng.mix(pop)  # 32-bit values in int64; products wrap modulo 2**64: still a deterministic hash
    for f in range(d):
        h = h * 0x100000001B3 + (bits[:, f] ^ (bits[:, f] >> 29))
    hv, inv, cnt = torch.unique(h, return_inverse=True, return_counts=True)
    rep = torch.full((hv.numel(),), N, dtype=torch.int64, device=X.device)
    rep.scatter_reduce_(0, inv, torch.arange(N, device=X.device), "amin")  # first row of each hash
    if bool((bits == bits[rep[inv]]).all()) and bool((pop == pop[rep[inv]]).all()):
        return pop[rep], X[rep], inv, cnt
    keyed = torch.cat([pop[:, None].to(torch.float64), X.double()], 1)
    U, inv, cnt = torch.unique(keyed, dim=0, return_inverse=True, return_counts=True)
    return U[:, 0].long(), U[:, 1:].to(X.dtype).contiguous(), inv, cnt


def _expand(cand_u, dist, first, nU, N, k):
    """Candidate uniques cand_u [V, K] (nU = none) at distances dist [V, K] -> the k best members
    [V, k] by (distance, index), from each unique's k lowest-index members first [nU, k+1]."""
    V, K = cand_u.shape
    mem = torch.where((cand_u < nU)[..., None], first[cand_u.clamp_max(nU - 1), :k], N)  # [V, K, k]
    md = torch.where(mem < N, dist[..., None], math.inf).reshape(V, K * k)
    mem = mem.reshape(V, K * k)
    mem, o = torch.sort(mem, -1)
    md = md.gather(-1, o)
    md, o = torch.sort(md, dim=-1, stable=True)
    return mem.gather(-1, o[:, :k])


# ----------------------------------------------------------------------------------------------------
# the agents
