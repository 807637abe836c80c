"""Gaussian-mixture proxy agents (SPEC §2, arXiv 2506.00077), as whole-population tensor operations.

State of B packed populations of n agents (C components, RAG of m points in D dimensions):
  w      [B, n, C]     float64  mixture weights, each row on the simplex
  rag    [B, n, m, D]  float64  each agent's retrieved points
  means  [C, D]                 fixed component means, shared by everyone          (update_means: false)
         [B, n, C, D]           each agent's own estimates, updated by its M-steps (update_means: true)
  var    python float           sigma**2, shared                                   (update_variances: false)
         [B, n, C]              each agent's own isotropic variances               (update_variances: true)

Component means: mu_c is the c-th point of the integer lattice {0, .., L-1}^D with L = ceil(C**(1/D)),
enumerated with the first coordinate fastest (mu_c[d] = (c // L**d) % L). In 1-D that is SPEC's
mu_c = c; in every dimension neighbouring components are 1 apart, so sigma keeps its meaning.

Initial state (before step 0): w_i one-hot on component i mod C (C = agents.components; null means
C = n, SPEC's default), entries clipped to [eps, 1-eps] and renormalised; the RAG holds m points drawn
from the agent's own mixture (stream GMM_INIT).

One step t, synchronously from the state after step t-1, every agent i (SPEC §2):
  1. mirror_i ~ Bernoulli(p) (interact.mirror_coins); if not mirrored, partner j uniform among the k
     nearest agents by ||w_i - w_j||_2 (self excluded, ties to the lower index; interact.pick_partners);
     j = i where mirrored.
  2. query x ~ mixture(w_i, means_i, var_i).
  3. j answers: copy j's RAG, replace its point farthest from x by x, one EM step from (w_j, means_j,
     var_j) on that copy -> (w', means', var'); answer y ~ mixture(w', means', var'). j's state is unchanged.
  4. i learns: replace the point of i's RAG farthest from y by y; one EM step from (w_i, means_i, var_i)
     on it -> i's new state.
  Label of agent i at step t = argmax_c w_ic of its state AFTER step t (ties to the lower component),
  so the labels of the last step are the final silos after T interactions.

EM step on points X (m of them) from (w, mu, var):
  log r_c(x) = log w_c - ||x - mu_c||^2 / (2 var_c) [- (D/2) log(2 pi var_c) when variances are per
  component], gamma_c(x) = softmax_c (log-sum-exp); w_new = mean_x gamma(x), clipped to [eps, 1-eps] and
  renormalised. M-step variants (N_c = sum_x gamma_c(x)): update_means: mu_c <- sum_x gamma_c(x) x / N_c;
  update_variances: var_c <- sum_x gamma_c(x) ||x - mu_c_new||^2 / (D N_c), floored at var_floor. A
  component with N_c < min_mass keeps its old mean and variance (no 0/0 from components no point uses).

Random numbers (rng.py, all keyed by the population seed, so a population's trajectory does not depend
on its batch): the component of a draw is picked by the inverse CDF of u = uniform64 over cumsum(w)
(the first c with cumsum_c > u * sum(w)); the point is mu_c + sqrt(var_c) * z, z = rng.normal.
  init point s of agent i:  u = uniform64(seed, GMM_INIT, i, s, 0), z_d = normal(seed, GMM_INIT, i, s, 1 + d)
  query of agent i at t:    u = uniform64(seed, GMM_PICK, t, i, 0), z_d = normal(seed, GMM_QUERY, t, i, d)
  answer to agent i at t:   u = uniform64(seed, GMM_PICK, t, i, 1), z_d = normal(seed, GMM_ANSWER, t, i, d)

Neighbours are exact in float64 (squared distances summed in feature order, ties to the lower index):
agents.knn = brute (knn_brute: all pairs, for small n and many packed populations), pruned (knn_pruned:
duplicates merged, kd leaves with box pruning, for large n) or auto (pruned when n >= pruned_min_n, else
brute). agents.knn = graph uses graph.knn with cfg.graph.backend instead, whose float32 distances
cannot resolve weights that differ by less than ~1e-7 (near-one-hot agents then tie and go to the lower
index): faster on a GPU (triton), not SPEC-exact for these weights.
"""
from __future__ import annotations

import math

import torch

from . import graph, interact, rng
from .errors import UserError
from .populations import Populations
from .step import StepRecord

# ----------------------------------------------------------------------------------------------------
# pure pieces (also what tests call with injected draws)


def component_means(C: int, D: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Lattice means [C, D]: mu_c[d] = (c // L**d) % L with L = ceil(C ** (1/D)); 1-D: mu_c = c."""
    L = 1
    while L**D < C:
        L += 1
    c = torch.arange(C, device=device)
    digits = [(c // L**d) % L for d in range(D)]
    return torch.stack(digits, -1).to(dtype)


def initial_weights(n: int, C: int, eps: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """[n, C]: agent i one-hot on component i mod C, clipped to [eps, 1-eps], renormalised.
    The normaliser is one scalar, so every row is an exact permutation of every other and all agents
    on different components are at exactly the same distance (ties then go to the lower index)."""
    if C == 1:
        return torch.ones(n, 1, dtype=dtype, device=device)
    z = (1.0 - eps) + (C - 1) * eps
    w = torch.full((n, C), eps / z, dtype=dtype, device=device)
    w[torch.arange(n, device=device), torch.arange(n, device=device) % C] = (1.0 - eps) / z
    return w


def normalise(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip to [eps, 1-eps] and renormalise. The normaliser sums each row in ascending order, so it does
    not depend on where the entries sit: weights that are permutations of each other (e.g. every agent
    sitting exactly on the clipped one-hot of its own component) stay exact permutations, all at exactly
    equal distances, and neighbour ties go to the lower index as SPEC says instead of to rounding noise."""
    w = w.clamp(eps, 1.0 - eps)
    return w / torch.sort(w, -1).values.sum(-1, keepdim=True)


def _pick(table: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """table [..., C, *tail] (per agent) gathered at c [...] -> [..., *tail]."""
    tail = table.shape[c.dim() + 1:]
    idx = c.reshape(*c.shape, 1, *([1] * len(tail))).expand(*c.shape, 1, *tail)
    return torch.gather(table, c.dim(), idx).squeeze(c.dim())


def sample_mixture(w, means, var, u, z):
    """One draw per mixture. w [..., C]; means [C, D] shared or [..., C, D]; var float or [..., C];
    u [...] uniform in (0, 1); z [..., D] standard normal -> x [..., D].
    Component: the first c with cumsum(w)_c > u * sum(w) (inverse CDF)."""
    C = w.shape[-1]
    cw = torch.cumsum(w, -1)
    c = torch.searchsorted(cw, (u * cw[..., -1]).unsqueeze(-1).contiguous(), right=True).squeeze(-1)
    c = c.clamp_max(C - 1)
    mu = means[c] if means.dim() == 2 else _pick(means, c)
    sd = math.sqrt(var) if isinstance(var, float) else _pick(var, c).sqrt().unsqueeze(-1)
    return mu + sd * z


def replace_farthest(rag: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """rag [..., m, D], x [..., D] -> a new RAG with the point farthest from x (squared Euclidean
    distance; ties to the lower slot) replaced by x."""
    d = (rag - x.unsqueeze(-2)).square().sum(-1)  # [..., m]
    slot = torch.argmax(d, -1)  # first maximal value on ties
    hit = torch.arange(rag.shape[-2], device=rag.device) == slot.unsqueeze(-1)
    return torch.where(hit.unsqueeze(-1), x.unsqueeze(-2), rag)


def em_step(w, points, means, var, eps, update_means=False, update_variances=False, min_mass=1e-6,
            var_floor=1e-4):
    """One EM step from (w, means, var) on points.
    w [..., C]; points [..., m, D]; means [C, D] or [..., C, D]; var float or [..., C].
    -> (w_new [..., C], means_new, var_new): means/var come back unchanged unless updated."""
    D = points.shape[-1]
    mu = means if means.dim() == 2 else means.unsqueeze(-3)  # broadcast over the m points
    diff = points.unsqueeze(-2) - mu  # [..., m, C, D]
    sq = diff.squeeze(-1).square_() if D == 1 else diff.square_().sum(-1)  # [..., m, C]
    if isinstance(var, float):
        logp = sq.div_(-2.0 * var).add_(torch.log(w).unsqueeze(-2))  # log w - sq / (2 var), in place
    else:
        v = var.unsqueeze(-2)
        logp = torch.log(w).unsqueeze(-2) - sq / (2.0 * v) - 0.5 * D * torch.log(2.0 * math.pi * v)
    # log-space responsibilities: softmax subtracts the row maximum before exponentiating (log-sum-exp)
    gamma = torch.softmax(logp, -1)  # [..., m, C]
    w_new = normalise(gamma.mean(-2), eps)
    if not (update_means or update_variances):
        return w_new, means, var
    mass = gamma.sum(-2)  # [..., C]
    used = mass >= min_mass
    safe = torch.where(used, mass, torch.ones_like(mass))
    means_new = means
    if update_means:
        est = (gamma.unsqueeze(-1) * points.unsqueeze(-2)).sum(-3) / safe.unsqueeze(-1)  # [..., C, D]
        means_new = torch.where(used.unsqueeze(-1), est, means.expand_as(est))
    var_new = var
    if update_variances:
        mu_new = means_new if means_new.dim() == 2 else means_new.unsqueeze(-3)
        sq_new = (points.unsqueeze(-2) - mu_new).square().sum(-1)  # [..., m, C]
        est = ((gamma * sq_new).sum(-2) / (D * safe)).clamp_min(var_floor)
        old = torch.full_like(est, var) if isinstance(var, float) else var.expand_as(est)
        var_new = torch.where(used, est, old)
    return w_new, means_new, var_new


def interaction(wi, ragi, meansi, vari, wj, ragj, meansj, varj, uq, zq, ua, za, eps, **mstep):
    """SPEC §2 steps 2-4 for a batch of (asker i, answerer j) pairs with the given draws.
    -> (new w_i, new rag_i, new means_i, new var_i, x, y)."""
    x = sample_mixture(wi, meansi, vari, uq, zq)
    rag_copy = replace_farthest(ragj, x)
    w1, means1, var1 = em_step(wj, rag_copy, meansj, varj, eps, **mstep)
    y = sample_mixture(w1, means1, var1, ua, za)
    rag_new = replace_farthest(ragi, y)
    w_new, means_new, var_new = em_step(wi, rag_new, meansi, vari, eps, **mstep)
    return w_new, rag_new, means_new, var_new, x, y


def labels_of(w: torch.Tensor) -> torch.Tensor:
    return torch.argmax(w, -1)


# ----------------------------------------------------------------------------------------------------
# exact k-nearest neighbours for large n: a kd partition with box pruning


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
        dist, nbr = _knn_flat(ux, upop, labels_of(ux) if argmax_groups else None, K, leaf_size, margin, budget)
        if bool((dist[:, 0] == 0).any()):  # distinct points at distance 0 (underflow): no dedup shortcut
            return _knn_flat(X, pop, labels_of(X) if argmax_groups else None, k, leaf_size, margin,
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


class GMMAgents:
    def __init__(self, cfg, pops: Populations, device):
        a = cfg.agents
        self.cfg, self.pops, self.device = cfg, pops, device
        self.B, self.n = pops.B, int(cfg.trial.n)
        n = self.n
        C = n if a.get("components") is None else a.components
        if not (isinstance(C, int) and C >= 1):
            raise UserError(f"agents.components={C!r} is not allowed: an integer >= 1, or null for n")
        self.C = C
        self.D = int(a.get("dim", 1))
        self.m = int(a.get("rag_size", 5))
        self.sigma = float(a.get("sigma", 0.2))
        self.eps = float(a.get("eps", 1e-12))
        if self.D < 1 or self.m < 1 or not self.sigma > 0 or not 0 < self.eps < 0.5 / C:
            raise UserError(f"agents: dim={self.D}, rag_size={self.m}, sigma={self.sigma}, eps={self.eps} "
                            f"are not allowed: dim >= 1, rag_size >= 1, sigma > 0, 0 < eps < 0.5/components")
        cells = self.B * n * (C * (1 + self.D * bool(a.get("update_means")) + bool(a.get("update_variances")))
                              + self.m * self.D)
        if cells > int(a.get("max_state", 2_000_000_000)):
            raise UserError(f"agents.components={C}: the state would hold {cells:,} numbers for {self.B} "
                            f"population(s) of n={n}; set agents.components (e.g. 30) or raise agents.max_state")
        self.mstep = dict(update_means=bool(a.get("update_means", False)),
                          update_variances=bool(a.get("update_variances", False)),
                          min_mass=float(a.get("min_mass", 1e-6)), var_floor=float(a.get("var_floor", 1e-4)))
        self.knn_mode = a.get("knn", "auto")
        if self.knn_mode not in ("auto", "brute", "pruned", "graph"):
            raise UserError(f"agents.knn={self.knn_mode!r} is not allowed: auto, brute, pruned or graph")
        self.pruned_min_n = int(a.get("pruned_min_n", 256))
        self.leaf_size = int(a.get("leaf_size", 1024))
        self.chunk = max(1, int(a.get("agent_chunk", 1 << 23)) // max(1, self.B * self.m * C * self.D))
        self.label_names = [str(c) for c in range(C)]
        self.k_max = int(pops.k.max())

        dt = torch.float64
        self.w = initial_weights(n, C, self.eps, dt, device).expand(self.B, n, C).contiguous()
        means0 = component_means(C, self.D, dt, device)
        self.means = (means0.expand(self.B, n, C, self.D).contiguous() if self.mstep["update_means"]
                      else means0)
        self.var = (torch.full((self.B, n, C), self.sigma**2, dtype=dt, device=device)
                    if self.mstep["update_variances"] else self.sigma**2)
        seeds = pops.seeds
        agent = torch.arange(n, device=device)
        slot = torch.arange(self.m, device=device)
        dim = torch.arange(self.D, device=device)
        u = rng.uniform64(seeds[:, None, None], rng.GMM_INIT, agent[None, :, None], slot[None, None, :], 0)
        z = rng.normal(seeds[:, None, None, None], rng.GMM_INIT, agent[None, :, None, None],
                       slot[None, None, :, None], 1 + dim)
        self.rag = sample_mixture(self._per_point(self.w), self._per_point(self.means),
                                  self._per_point(self.var), u, z)  # [B, n, m, D]

    def _per_point(self, state):
        """Per-agent state repeated along a new axis for the m RAG points (shared state passes through)."""
        if isinstance(state, float) or state.dim() == 2:
            return state
        return state.unsqueeze(2).expand(*state.shape[:2], self.m, *state.shape[2:])

    def state_dict(self) -> dict:
        """Everything a resumed run needs (randomness is counter-based: no generator state)."""
        state = {"w": self.w.cpu().clone(), "rag": self.rag.cpu().clone()}
        if self.means.dim() == 4:
            state["means"] = self.means.cpu().clone()
        if not isinstance(self.var, float):
            state["var"] = self.var.cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"].to(self.device, torch.float64)
        self.rag = state["rag"].to(self.device, torch.float64)
        if "means" in state:
            self.means = state["means"].to(self.device, torch.float64)
        if "var" in state:
            self.var = state["var"].to(self.device, torch.float64)

    def neighbours(self, w: torch.Tensor) -> torch.Tensor:
        """[B, n, k_max] nearest agents by ||w_i - w_j||, self excluded, ties to the lower index."""
        mode = self.knn_mode
        if mode == "auto":
            mode = "pruned" if self.n >= self.pruned_min_n else "brute"
        if mode == "pruned":
            return knn_pruned(w, self.k_max, leaf_size=self.leaf_size)
        if mode == "brute":
            return knn_brute(w, self.k_max)
        return graph.knn(w, self.k_max, self.cfg.graph.backend)  # float32 distances

    @torch.inference_mode()
    def step(self, t: int) -> StepRecord:
        B, n, C, m, D = self.B, self.n, self.C, self.m, self.D
        pops, dev = self.pops, self.device
        mirrored = interact.mirror_coins(pops.seeds, pops.p, t, n)  # [B, n]
        if bool(mirrored.all()):
            src = torch.arange(n, device=dev).expand(B, n)
        else:
            nb = self.neighbours(self.w)
            partner = interact.pick_partners(pops.seeds, nb, pops.k, t)
            src = interact.context_sources(mirrored, partner)  # [B, n]
        w_new = torch.empty_like(self.w)
        rag_new = torch.empty_like(self.rag)
        means_new = torch.empty_like(self.means) if self.means.dim() == 4 else self.means
        var_new = torch.empty_like(self.var) if not isinstance(self.var, float) else self.var
        seeds = pops.seeds[:, None]
        dim = torch.arange(D, device=dev)

        def take(state, s, a0, a1):  # own slice and the partners' rows of a per-agent state
            if isinstance(state, float) or state.dim() == 2:
                return state, state
            flat = state.reshape(B, n, -1)
            j = torch.gather(flat, 1, s[..., None].expand(-1, -1, flat.shape[-1]))
            return state[:, a0:a1], j.reshape(B, a1 - a0, *state.shape[2:])

        for a0 in range(0, n, self.chunk):
            a1 = min(n, a0 + self.chunk)
            s = src[:, a0:a1]
            agent = torch.arange(a0, a1, device=dev)[None, :]
            uq = rng.uniform64(seeds, rng.GMM_PICK, t, agent, 0)
            ua = rng.uniform64(seeds, rng.GMM_PICK, t, agent, 1)
            zq = rng.normal(seeds[..., None], rng.GMM_QUERY, t, agent[..., None], dim)
            za = rng.normal(seeds[..., None], rng.GMM_ANSWER, t, agent[..., None], dim)
            wi, wj = take(self.w, s, a0, a1)
            ri, rj = take(self.rag, s, a0, a1)
            mi, mj = take(self.means, s, a0, a1)
            vi, vj = take(self.var, s, a0, a1)
            w2, r2, m2, v2, _, _ = interaction(wi, ri, mi, vi, wj, rj, mj, vj, uq, zq, ua, za, self.eps,
                                               **self.mstep)
            w_new[:, a0:a1] = w2
            rag_new[:, a0:a1] = r2
            if self.means.dim() == 4:
                means_new[:, a0:a1] = m2
            if not isinstance(self.var, float):
                var_new[:, a0:a1] = v2
        self.w, self.rag, self.means, self.var = w_new, rag_new, means_new, var_new
        return StepRecord(labels=labels_of(self.w).cpu(), partner=src.cpu(), mirrored=mirrored.cpu())
