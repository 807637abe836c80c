"""Fixed social graphs (trial.graph): whom an agent may take an answer from.

trial.graph is one value or a list of them (a list is a swept dimension: one cell per value):
  knn                                           the paper's: every agent is a candidate, the k nearest
                                                in embedding space are kept (core/graph.py)
  complete                                      every other agent
  {er: {p: 0.1}}                                Erdos-Renyi G(n, p)
  {ws: {k: 4, p: 0.1}}                          Watts-Strogatz: a ring where each agent knows its k nearest
                                                (k even), every edge rewired with probability p
  {ba: {m: 2}}                                  Barabasi-Albert: each new agent attaches to m others
  {sbm: {sizes: [15, 15], p_in: 0.5, p_out: 0.02}}  stochastic block model (sizes sum to n)
  {file: edges.txt}                             an undirected edge list: "i j" per line, 0-based agents,
                                                '#' starts a comment; repeated edges count once
Random graphs are drawn by networkx with a seed from (population seed, GRAPH stream): replica r of every
cell gets the same graph for the same value, and a cell run alone gets the graph it has in a grid.

A graph is kept as padded neighbour lists, built once before step 0:
  nbrs  [B, n, D] int64  each agent's neighbours, ascending, padded with -1 (D: the largest degree)
  deg   [B, n]    int64  how many of the row are neighbours
  fixed [B]       bool   the population has a fixed graph (else knn)

Partners at step t (graph.mix): uniform (the partner is uniform among the graph neighbours; k is not
used) or knn_within (the min(k, degree) nearest in embedding space among the graph neighbours, the
partner uniform among those, as with knn). An agent without neighbours takes its own answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import interact, rng
from .schedules import plain
from ..errors import UserError, is_int, is_num, need

KINDS = ("knn", "complete", "er", "ws", "ba", "sbm", "file")
MIXES = ("uniform", "knn_within")
GRAPH = 106  # rng stream of the graphs' seeds (after core/rng.py's experiment streams 101-105)
FORMS = ("knn, complete, {er: {p: P}}, {ws: {k: K, p: P}}, {ba: {m: M}}, "
         "{sbm: {sizes: [..], p_in: P, p_out: P}} or {file: path}")


@dataclass(frozen=True)
class SocialGraphs:
    nbrs: torch.Tensor  # [B, n, D] int64, -1 padded
    deg: torch.Tensor  # [B, n] int64
    fixed: torch.Tensor  # [B] bool

    def to(self, device) -> "SocialGraphs":
        return SocialGraphs(self.nbrs.to(device), self.deg.to(device), self.fixed.to(device))


# ------------------------------------------------------------------------------------- config values

def _prob(key: str, v) -> float:
    need(is_num(v) and 0 <= v <= 1, key, v, "a probability in [0, 1]")
    return float(v)


def parse(value, n: int) -> tuple[str, dict]:
    """One trial.graph value -> (kind, parameters), checked against n agents (one-line errors)."""
    value = plain(value)
    if isinstance(value, str):
        need(value in ("knn", "complete"), "trial.graph", value, FORMS)
        return value, {}
    need(isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS[2:], "trial.graph", value,
         FORMS)
    kind, params = next(iter(value.items()))
    if kind == "file":
        need(isinstance(params, str) and params, "trial.graph.file", params, "the path of an edge-list file")
        return kind, {"path": params}
    need(isinstance(params, dict), f"trial.graph.{kind}", params, FORMS)
    allowed = {"er": {"p"}, "ws": {"k", "p"}, "ba": {"m"}, "sbm": {"sizes", "p_in", "p_out"}}[kind]
    need(set(params) == allowed, f"trial.graph.{kind}", params, f"exactly the keys {', '.join(sorted(allowed))}")
    if kind == "er":
        return kind, {"p": _prob("trial.graph.er.p", params["p"])}
    if kind == "ws":
        k = params["k"]
        need(is_int(k) and k >= 2 and k % 2 == 0 and k < n, "trial.graph.ws.k", k,
             f"an even integer with 2 <= k < trial.n={n} (each agent's ring neighbours)")
        return kind, {"k": k, "p": _prob("trial.graph.ws.p", params["p"])}
    if kind == "ba":
        m = params["m"]
        need(is_int(m) and 1 <= m < n, "trial.graph.ba.m", m, f"an integer with 1 <= m < trial.n={n}")
        return kind, {"m": m}
    sizes = params["sizes"]
    need(isinstance(sizes, list) and sizes and all(is_int(s) and s >= 1 for s in sizes) and sum(sizes) == n,
         "trial.graph.sbm.sizes", sizes, f"a list of block sizes >= 1 summing to trial.n={n}")
    return kind, {"sizes": sizes, "p_in": _prob("trial.graph.sbm.p_in", params["p_in"]),
                  "p_out": _prob("trial.graph.sbm.p_out", params["p_out"])}


def label(value) -> str:
    """A graph value as its cell column shows it: knn, complete, er-p0.1, ws-k4-p0.1, ba-m2, sbm-15x15-0.5-0.02,
    file-edges.txt."""
    value = plain(value)
    if isinstance(value, str):
        return value
    kind, params = next(iter(value.items()))
    if kind == "file":
        return f"file-{Path(params).name}"
    if kind == "sbm":
        return f"sbm-{'x'.join(str(s) for s in params['sizes'])}-{params['p_in']:g}-{params['p_out']:g}"
    return "-".join([kind] + [f"{key}{params[key]:g}" for key in sorted(params)])


def read_edge_file(path: str, n: int) -> torch.Tensor:
    """An edge list -> [E, 2] int64 undirected edges (i < j, distinct). Raises a one-line UserError naming the
    file, line and value for anything that is not two agent indices in [0, n) that differ."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"trial.graph.file={path!r} cannot be read ({e.__class__.__name__}): an edge-list file, "
                        f"'i j' per line") from None
    edges = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        where = f"trial.graph.file={path!r} line {number}"
        if len(fields) != 2 or not all(f.lstrip("-").isdigit() for f in fields):
            raise UserError(f"{where}: {line.strip()!r} is not allowed: two agent indices 'i j'")
        i, j = int(fields[0]), int(fields[1])
        for v in (i, j):
            if not 0 <= v < n:
                raise UserError(f"{where}: agent {v} is out of range: indices run from 0 to trial.n-1={n - 1}")
        if i == j:
            raise UserError(f"{where}: self-loop {i}-{j} is not allowed: an agent does not talk to itself")
        edges.append((min(i, j), max(i, j)))
    if not edges:
        raise UserError(f"trial.graph.file={path!r} holds no edges: 'i j' per line")
    return torch.tensor(sorted(set(edges)), dtype=torch.int64)


# ------------------------------------------------------------------------------------------ building

def _seed(population_seed: int) -> int:
    return int(rng.mix(population_seed, GRAPH))


def edges_of(kind: str, params: dict, n: int, seed: int) -> torch.Tensor:
    """The undirected edges of one graph -> [E, 2] int64, i < j. seed: the population's seed."""
    import networkx as nx

    s = _seed(seed)
    if kind == "complete":
        return torch.combinations(torch.arange(n), 2)
    if kind == "file":
        return read_edge_file(params["path"], n)
    if kind == "er":
        g = nx.fast_gnp_random_graph(n, params["p"], seed=s) if params["p"] < 0.1 else nx.gnp_random_graph(
            n, params["p"], seed=s)
    elif kind == "ws":
        g = nx.watts_strogatz_graph(n, params["k"], params["p"], seed=s)
    elif kind == "ba":
        g = nx.barabasi_albert_graph(n, params["m"], seed=s)
    else:
        k = len(params["sizes"])
        probs = [[params["p_in"] if a == b else params["p_out"] for b in range(k)] for a in range(k)]
        g = nx.stochastic_block_model(params["sizes"], probs, seed=s)
    e = torch.tensor(sorted((min(i, j), max(i, j)) for i, j in g.edges()), dtype=torch.int64)
    return e.reshape(-1, 2)


def neighbour_lists(edges: list[torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Undirected edges of B graphs -> (nbrs [B, n, D] ascending, -1 padded; deg [B, n])."""
    B = len(edges)
    deg = torch.zeros(B, n, dtype=torch.int64)
    rows = []
    for b, e in enumerate(edges):
        both = torch.cat([e, e.flip(1)])  # [2E, 2] both directions
        order = torch.argsort(both[:, 0] * n + both[:, 1])
        both = both[order]
        deg[b] = torch.bincount(both[:, 0], minlength=n)
        rows.append(both)
    D = max(1, int(deg.max()))
    nbrs = torch.full((B, n, D), -1, dtype=torch.int64)
    for b, both in enumerate(rows):
        start = torch.cumsum(deg[b], 0) - deg[b]  # [n] first edge of each agent
        pos = torch.arange(both.shape[0]) - start[both[:, 0]]  # position within the agent's row
        nbrs[b, both[:, 0], pos] = both[:, 1]
    return nbrs, deg


def build(values: list, of: list[int], seeds: torch.Tensor, n: int) -> SocialGraphs | None:
    """The graphs of B populations: population b has values[of[b]]. None when every one is knn."""
    parsed = [parse(v, n) for v in values]
    if all(kind == "knn" for kind, _ in parsed):
        return None
    fixed = torch.tensor([parsed[c][0] != "knn" for c in of])
    cache: dict[tuple, torch.Tensor] = {}
    edges = []
    for b, c in enumerate(of):
        kind, params = parsed[c]
        if kind == "knn":
            edges.append(torch.empty(0, 2, dtype=torch.int64))
            continue
        key = (c, int(seeds[b]) if kind not in ("complete", "file") else 0)
        if key not in cache:
            cache[key] = edges_of(kind, params, n, int(seeds[b]))
        edges.append(cache[key])
    nbrs, deg = neighbour_lists(edges, n)
    return SocialGraphs(nbrs, deg, fixed)


# ------------------------------------------------------------------------------------------ partners

def nearest_within(x: torch.Tensor, nbrs: torch.Tensor, k: int, budget: int = 1 << 24) -> torch.Tensor:
    """The k nearest graph neighbours of every agent in the space of x, nearest first, ties to the lower
    index, padding (-1) last. Squared distances add the features' squares in feature order in x's dtype:
    the arithmetic of core/graph.py's exact pass (float32) and agents/gmm_neighbours.py (float64), so a
    complete graph gives their neighbours exactly. x [B, n, d], nbrs [B, n, D] -> [B, n, min(k, D)]"""
    B, n, d = x.shape
    D = nbrs.shape[-1]
    k = min(k, D)
    out = torch.empty(B, n, k, dtype=torch.int64, device=x.device)
    rc = max(1, budget // max(1, B * D * d))  # rows per chunk: the gathered [B, rc, D, d] stays in budget
    for r0 in range(0, n, rc):
        idx = nbrs[:, r0:r0 + rc]  # [B, r, D]
        r = idx.shape[1]
        cand = torch.gather(x, 1, idx.clamp_min(0).reshape(B, -1, 1).expand(-1, -1, d)).reshape(B, r, D, d)
        rows = x[:, r0:r0 + r]
        dist = torch.zeros(B, r, D, dtype=x.dtype, device=x.device)
        for f in range(d):
            dist += (rows[:, :, None, f] - cand[..., f]).square()
        dist = dist.masked_fill(idx < 0, math.inf)
        # nbrs ascend, so a stable sort by distance breaks ties to the lower index
        order = torch.sort(dist, dim=-1, stable=True).indices[..., :k]
        out[:, r0:r0 + r] = torch.gather(idx, -1, order)
    return out


def graph_partners(seeds: torch.Tensor, g: SocialGraphs, k: torch.Tensor, t: int, mix: str,
                   x: torch.Tensor | None = None) -> torch.Tensor:
    """Partners on fixed graphs, drawn as interact.pick_partners draws them (same stream, same u).
    seeds [B]; k [B] or [B, n]; x [B, n, d] the points knn_within ranks by -> partner [B, n]"""
    B, n, _ = g.nbrs.shape
    if mix == "knn_within":
        cand = nearest_within(x, g.nbrs, int(k.max()))
        take = torch.minimum(interact.per_agent(k).expand(B, n), g.deg)
    else:
        cand, take = g.nbrs, g.deg
    partner = interact.pick_partners(seeds, cand, take.clamp_min(1), t)
    own = torch.arange(n, device=partner.device).expand(B, n)
    return torch.where(g.deg > 0, partner, own)


def partners(seeds: torch.Tensor, k: torch.Tensor, t: int, x: torch.Tensor, knn, g: SocialGraphs | None,
             mix: str, within: torch.Tensor | None = None) -> torch.Tensor:
    """Every population's partners at step t: knn populations from knn(x) -> [B, n, K] neighbours; fixed-graph
    ones from their graph, ranked by `within` (default x) for knn_within.
    seeds [B]; k [B] or [B, n]; x [B, n, d] -> [B, n] partner indices."""
    if g is None:
        return interact.pick_partners(seeds, knn(x), k, t)
    g = g.to(x.device)
    partner = torch.empty(x.shape[:2], dtype=torch.int64, device=x.device)
    for rows, fixed in ((g.fixed.nonzero().flatten(), True), ((~g.fixed).nonzero().flatten(), False)):
        if rows.numel() == 0:
            continue
        k_rows = k[rows] if k.dim() > 0 else k
        if fixed:
            sub = SocialGraphs(g.nbrs[rows], g.deg[rows], g.fixed[rows])
            partner[rows] = graph_partners(seeds[rows], sub, k_rows, t, mix, (x if within is None else within)[rows])
        else:
            partner[rows] = interact.pick_partners(seeds[rows], knn(x[rows]), k_rows, t)
    return partner
