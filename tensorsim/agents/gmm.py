"""Gaussian-mixture proxy agents (docs/SPEC.md §2, arXiv 2506.00077), as whole-population tensor operations.

State of B packed populations of n agents (C components, RAG of m points in D dimensions):
  w      [B, n, C]     float64  mixture weights, each row on the simplex
  rag    [B, n, m, D]  float64  each agent's retrieved points
  means  [C, D]                 fixed component means, shared by everyone          (update_means: false)
         [B, n, C, D]           each agent's own estimates, updated by its M-steps (update_means: true)
  var    python float           sigma**2, shared                                   (update_variances: false)
         [B, n, C]              each agent's own isotropic variances               (update_variances: true)

Component means: mu_c is the c-th point of the integer lattice {0, .., L-1}^D with L = ceil(C**(1/D)),
enumerated with the first coordinate fastest (mu_c[d] = (c // L**d) % L). In 1-D that is docs/SPEC.md's
mu_c = c; in every dimension neighbouring components are 1 apart, so sigma keeps its meaning.

Initial state (before step 0): w_i one-hot on component i mod C (C = agents.components; null means
C = n, docs/SPEC.md's default), entries clipped to [eps, 1-eps] and renormalised; the RAG holds m points drawn
from the agent's own mixture (stream GMM_INIT).

One step t, synchronously from the state after step t-1, every agent i (docs/SPEC.md §2):
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
index): faster on a GPU (triton), not docs/SPEC.md-exact for these weights.
"""
from __future__ import annotations

import math

import torch

from ..core import graph, interact, rng, social
from ..core.populations import Populations
from ..core.step import StepRecord
from ..errors import UserError, need
from .gmm_neighbours import knn_brute, knn_pruned

WRITES_TEXT = False


def uses_graph(cfg) -> bool:
    return cfg.agents.get("knn") == "graph"


def validate(cfg) -> None:
    """GMM agents read no knowledge base and load no model: a path given for one would be silently ignored."""
    for key, value in (("kb", cfg.get("kb")), ("model.path", cfg.model.get("path")),
                       ("embedder.path", cfg.embedder.get("path"))):
        need(not value, key, value, f"agents={cfg.agents.kind} uses no knowledge base, LLM or embedder "
                                    f"(drop it, or set agents=llm)")


def build(cfg, pops: Populations, device, dtype):
    """-> (GMMAgents, component names "0".."C-1", what the run used)"""
    agents = GMMAgents(cfg, pops, device)
    return agents, agents.label_names, {"agents": "gmm"}


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
    equal distances, and neighbour ties go to the lower index as docs/SPEC.md says instead of to rounding noise."""
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


def answer(wi, meansi, vari, wj, ragj, meansj, varj, uq, zq, ua, za, eps, **mstep):
    """docs/SPEC.md §2 steps 2-3: i's query x and j's answer y. -> (x, y), each [..., D]."""
    x = sample_mixture(wi, meansi, vari, uq, zq)
    rag_copy = replace_farthest(ragj, x)
    w1, means1, var1 = em_step(wj, rag_copy, meansj, varj, eps, **mstep)
    return x, sample_mixture(w1, means1, var1, ua, za)


def learn(wi, ragi, meansi, vari, y, eps, **mstep):
    """docs/SPEC.md §2 step 4: i takes y into its RAG and steps EM. -> (new w_i, rag_i, means_i, var_i)."""
    rag_new = replace_farthest(ragi, y)
    w_new, means_new, var_new = em_step(wi, rag_new, meansi, vari, eps, **mstep)
    return w_new, rag_new, means_new, var_new


def interaction(wi, ragi, meansi, vari, wj, ragj, meansj, varj, uq, zq, ua, za, eps, **mstep):
    """docs/SPEC.md §2 steps 2-4 for a batch of (asker i, answerer j) pairs with the given draws.
    -> (new w_i, new rag_i, new means_i, new var_i, x, y)."""
    x, y = answer(wi, meansi, vari, wj, ragj, meansj, varj, uq, zq, ua, za, eps, **mstep)
    return (*learn(wi, ragi, meansi, vari, y, eps, **mstep), x, y)


def initial_points(seeds, agent, slot, C: int, D: int, sigma: float, eps: float) -> torch.Tensor:
    """Point `slot` of the initial RAG of `agent`, recomputed from its counter-based draws (the same numbers
    GMMAgents.__init__ drew): the proxy's initial knowledge base, for trial.noise_mode=kb.
    seeds [B], agent and slot [B, n] -> [B, n, D]"""
    n = agent.shape[-1]
    dt, dev = torch.float64, agent.device
    w0 = initial_weights(n, C, eps, dt, dev)[agent]  # [B, n, C]: agent j one-hot on j mod C
    dim = torch.arange(D, device=dev)
    u = rng.uniform64(seeds[:, None], rng.GMM_INIT, agent, slot, 0)
    z = rng.normal(seeds[:, None, None], rng.GMM_INIT, agent[..., None], slot[..., None], 1 + dim)
    return sample_mixture(w0, component_means(C, D, dt, dev), sigma**2, u, z)


def garbled_answers(y, garbled, mode: str, seeds, t: int, initial, m: int):
    """trial.noise for the proxy: the answer a garbled agent receives. swap: the answer given to a uniform
    agent of its population at this step; kb: a uniform one of the m points of a uniform agent's initial RAG
    (initial(agent, slot) -> points). drop is handled by the caller (the agent learns nothing). y [B, n, D], garbled [B, n]."""
    B, n, _ = y.shape
    j = interact.noise_picks(seeds, rng.NOISE_PICK, t, n, n)  # [B, n]
    if mode == "swap":
        other = torch.gather(y, 1, j[..., None].expand_as(y))
    else:
        other = initial(j, interact.noise_picks(seeds, rng.NOISE_SLOT, t, n, m))
    return torch.where(garbled[..., None], other, y)


def labels_of(w: torch.Tensor) -> torch.Tensor:
    return torch.argmax(w, -1)


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
        B, n, D = self.B, self.n, self.D
        pops, dev = self.pops, self.device
        mirrored = interact.mirror_coins(pops.seeds, pops.p_at(t), t, n)  # [B, n]
        if bool(mirrored.all()):
            src = torch.arange(n, device=dev).expand(B, n)
        else:
            partner = social.partners(pops.seeds, pops.k_at(t), t, self.w, self.neighbours, pops.graphs,
                                      self.cfg.graph.get("mix", "uniform"))
            src = interact.context_sources(mirrored, partner)  # [B, n]
        w_new = torch.empty_like(self.w)
        rag_new = torch.empty_like(self.rag)
        means_new = torch.empty_like(self.means) if self.means.dim() == 4 else self.means
        var_new = torch.empty_like(self.var) if not isinstance(self.var, float) else self.var
        seeds = pops.seeds[:, None]
        dim = torch.arange(D, device=dev)

        def own(state, a0, a1):  # the agents' own slice of a per-agent state (shared state passes through)
            return state if isinstance(state, float) or state.dim() == 2 else state[:, a0:a1]

        def take(state, s, a0, a1):  # own slice and the partners' rows of a per-agent state
            if isinstance(state, float) or state.dim() == 2:
                return state, state
            flat = state.reshape(B, n, -1)
            j = torch.gather(flat, 1, s[..., None].expand(-1, -1, flat.shape[-1]))
            return state[:, a0:a1], j.reshape(B, a1 - a0, *state.shape[2:])

        # two passes over chunks of agents: every answer first, so that noise can garble them across the
        # population (swap), then every agent learns from the answer it received
        y = torch.empty(B, n, D, dtype=self.w.dtype, device=dev)
        for a0 in range(0, n, self.chunk):
            a1 = min(n, a0 + self.chunk)
            s = src[:, a0:a1]
            agent = torch.arange(a0, a1, device=dev)[None, :]
            uq = rng.uniform64(seeds, rng.GMM_PICK, t, agent, 0)
            ua = rng.uniform64(seeds, rng.GMM_PICK, t, agent, 1)
            zq = rng.normal(seeds[..., None], rng.GMM_QUERY, t, agent[..., None], dim)
            za = rng.normal(seeds[..., None], rng.GMM_ANSWER, t, agent[..., None], dim)
            wi, wj = take(self.w, s, a0, a1)
            _, rj = take(self.rag, s, a0, a1)
            mi, mj = take(self.means, s, a0, a1)
            vi, vj = take(self.var, s, a0, a1)
            y[:, a0:a1] = answer(wi, mi, vi, wj, rj, mj, vj, uq, zq, ua, za, self.eps, **self.mstep)[1]
        garbled = interact.garble_coins(pops.seeds, pops.noise_of(), t, n) if pops.noisy else None  # [B, n]
        if garbled is not None and pops.noise_mode != "drop":
            y = garbled_answers(y, garbled, pops.noise_mode, pops.seeds, t, self._initial, self.m)
        for a0 in range(0, n, self.chunk):
            a1 = min(n, a0 + self.chunk)
            w2, r2, m2, v2 = learn(self.w[:, a0:a1], self.rag[:, a0:a1], own(self.means, a0, a1),
                                   own(self.var, a0, a1), y[:, a0:a1], self.eps, **self.mstep)
            if garbled is not None and pops.noise_mode == "drop":
                # drop: the agent received nothing, so it learns nothing: RAG, weights (and means,
                # variances) stay as they were; an EM step on an unchanged RAG would still move w
                keep = garbled[:, a0:a1]
                w2 = torch.where(keep[..., None], self.w[:, a0:a1], w2)
                r2 = torch.where(keep[..., None, None], self.rag[:, a0:a1], r2)
                if self.means.dim() == 4:
                    m2 = torch.where(keep[..., None, None], self.means[:, a0:a1], m2)
                if not isinstance(self.var, float):
                    v2 = torch.where(keep[..., None], self.var[:, a0:a1], v2)
            w_new[:, a0:a1] = w2
            rag_new[:, a0:a1] = r2
            if self.means.dim() == 4:
                means_new[:, a0:a1] = m2
            if not isinstance(self.var, float):
                var_new[:, a0:a1] = v2
        self.w, self.rag, self.means, self.var = w_new, rag_new, means_new, var_new
        return StepRecord(labels=labels_of(self.w).cpu(), partner=src.cpu(), mirrored=mirrored.cpu(),
                          garbled=None if garbled is None else garbled.cpu())

    def _initial(self, agent, slot):
        """Initial RAG points of (agent, slot) [B, n] -> [B, n, D] (trial.noise_mode=kb)."""
        return initial_points(self.pops.seeds, agent, slot, self.C, self.D, self.sigma, self.eps)

