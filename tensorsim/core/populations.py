"""The packed populations of one run: B = cells x replicas, each with its own k, p, noise and seed.

A population's seed depends on the run seed and its replica index only, not on its cell or position
in the batch, so a cell simulated alone draws the same coins, partners and tokens as the same
cell packed into a grid (and cells of one grid share random numbers replica by replica: common
random numbers, which sharpen comparisons between cells).

Every experiment dimension is a tensor per population (and per agent where it applies), evaluated
at step t by k_at / p_at as [B] or [B, n] without a loop over agents:
  k_steps, p_steps  [B, T]  trial.k / trial.p over the steps (core/schedules.py; a constant fills its row)
  agent_type        [B, n]  trial.types: each agent's type, drawn with the population's seed
  k_own, p_own      [B, n]  where an agent has its own k / p (its type's, or a Beta draw) ...
  k_agent, p_agent  [B, n]  ... and that value; elsewhere the population's value at t applies
  noise             [B]     trial.noise: probability that the answer an agent receives is garbled
  graphs                    trial.graph: fixed social graphs as padded neighbour lists (core/social.py)
Cells are the product trial.k x trial.p x trial.noise x trial.graph (lists; k outer); a cell is named by
the values of its swept keys (cell_keys: k and p, and noise and graph when they are lists).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

from . import rng, schedules, social
from ..errors import UserError, is_num, need

NOISE_MODES = ("drop", "swap", "kb")
BETA_CANDIDATES = 16  # rejection rounds of each Gamma draw (Marsaglia-Tsang accepts >= 95% per round)


@dataclass(frozen=True)
class Populations:
    k: torch.Tensor  # [B] int64, the largest k the population uses (any step, any agent): sizes neighbour lists
    p: torch.Tensor  # [B] float32, the population's p at t=0 (its p, for constant cells without types)
    seeds: torch.Tensor  # [B] int64
    cell: torch.Tensor  # [B] int64, index into cells
    replica: torch.Tensor  # [B] int64
    cells: list[tuple]  # each cell's values of cell_keys: (k, p), plus noise, graph where swept; labels: schedules
    cell_keys: tuple[str, ...] = ("k", "p")
    k_steps: torch.Tensor | None = None  # [B, T] int64 (None: k every step)
    p_steps: torch.Tensor | None = None  # [B, T] float32 (None: p every step)
    k_own: torch.Tensor | None = None  # [B, n] bool
    k_agent: torch.Tensor | None = None  # [B, n] int64
    p_own: torch.Tensor | None = None  # [B, n] bool
    p_agent: torch.Tensor | None = None  # [B, n] float32
    agent_type: torch.Tensor | None = None  # [B, n] int64 index into type_names
    type_names: tuple[str, ...] = ("all",)
    noise: torch.Tensor | None = None  # [B] float32 (None: no noise)
    noise_mode: str = "drop"
    graphs: social.SocialGraphs | None = None  # None: every population uses knn

    @property
    def B(self) -> int:
        return int(self.k.numel())

    @property
    def noisy(self) -> bool:
        return self.noise is not None and bool((self.noise > 0).any())

    def to(self, device) -> "Populations":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def _at(self, steps, base, t, own, agent):
        """The value of every population at step t ([B]), or of every agent ([B, n]) where some have their own."""
        now = base if steps is None else steps[:, min(t, steps.shape[1] - 1)]  # [B]
        if own is None:
            return now
        return torch.where(own, agent, now[:, None])  # [B, n]

    def k_at(self, t: int) -> torch.Tensor:
        """k of every population at step t: [B] int64, or [B, n] when agents have their own."""
        return self._at(self.k_steps, self.k, t, self.k_own, self.k_agent)

    def p_at(self, t: int) -> torch.Tensor:
        """p of every population at step t: [B] float32, or [B, n] when agents have their own."""
        return self._at(self.p_steps, self.p, t, self.p_own, self.p_agent)

    def mean_at(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_t, p_t) per population, averaged over agents where they differ: [B] float64 each."""
        k, p = self.k_at(t).double(), self.p_at(t).double()
        return (k.mean(-1) if k.dim() == 2 else k), (p.mean(-1) if p.dim() == 2 else p)

    def noise_of(self) -> torch.Tensor:
        """[B] float32 noise probability (zeros without noise)."""
        return self.noise if self.noise is not None else torch.zeros(self.B, device=self.seeds.device)


def as_list(value) -> list:
    """A scalar, a schedule (mapping) or a sequence (list, tuple, OmegaConf ListConfig) -> list."""
    return [value] if isinstance(value, (int, float, str, Mapping)) or value is None else list(value)


def is_beta(value) -> bool:
    return isinstance(value, Mapping) and list(value) == ["beta"]


def beta_params(key: str, value) -> tuple[float, float]:
    ab = value["beta"]
    ok = (not isinstance(ab, (str, Mapping)) and hasattr(ab, "__len__") and len(ab) == 2
          and all(is_num(x) and x > 0 for x in ab))
    need(ok, key, schedules.plain(value), "{beta: [a, b]} with a > 0 and b > 0")
    return float(ab[0]), float(ab[1])


def cell_label(value, kind=float):
    """A cell's value of k (kind=int) or p (float) as the k, p columns show it: the number, or a label."""
    if is_num(value):
        return kind(value)
    return f"beta{value['beta'][0]:g}-{value['beta'][1]:g}" if is_beta(value) else schedules.label(value)


def type_counts(shares: list[float], n: int) -> list[int]:
    """Agents per type: floor(share * n), the remaining agents to the largest remainders (lower type on ties)."""
    quota = [s * n for s in shares]
    counts = [math.floor(q + 1e-9) for q in quota]
    order = sorted(range(len(shares)), key=lambda i: (-(quota[i] - counts[i]), i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_types(seeds: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Each agent's type: agents ranked by a uniform draw keyed on (seed, agent), the first counts[0] of
    the ranking get type 0, and so on. seeds [B] -> [B, n] int64 (exactly counts[c] agents of type c)."""
    n = sum(counts)
    agent = torch.arange(n, device=seeds.device)
    u = rng.mix(seeds[:, None], rng.TYPE, agent[None, :])  # [B, n] 32-bit keys
    rank = torch.argsort(torch.argsort(u * n + agent, dim=-1), dim=-1)  # [B, n], ties to the lower agent
    bounds = torch.tensor(list(itertools.accumulate(counts)), device=seeds.device)
    return torch.bucketize(rank, bounds, right=True)


def gamma_draws(alpha: float, seeds: torch.Tensor, n: int, which: int) -> torch.Tensor:
    """Gamma(alpha, 1) per agent by Marsaglia-Tsang on counter-based normals and uniforms, BETA_CANDIDATES
    candidates each, the first accepted one taken. alpha < 1 uses Gamma(alpha + 1) * U^(1/alpha).
    seeds [B] -> [B, n] float64"""
    a = alpha + 1.0 if alpha < 1 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    agent = torch.arange(n, device=seeds.device)[None, :, None]
    r = torch.arange(BETA_CANDIDATES, device=seeds.device)[None, None, :]
    s = seeds[:, None, None]
    x = rng.normal(s, rng.BETA, which, agent, r, 0)  # [B, n, R]
    u = rng.uniform64(s, rng.BETA, which, agent, r, 1)
    v = (1 + c * x) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    first = torch.argmax(ok.to(torch.int8), -1, keepdim=True)  # first accepted candidate (0 if none)
    g = torch.gather(d * v.clamp_min(0), -1, first).squeeze(-1)
    g = torch.where(ok.any(-1), g, torch.full_like(g, d))  # never reached in practice: 0.05**16
    if alpha < 1:
        g = g * rng.uniform64(seeds[:, None], rng.BETA, which, agent[..., 0], BETA_CANDIDATES) ** (1.0 / alpha)
    return g


def beta_draws(a: float, b: float, seeds: torch.Tensor, n: int) -> torch.Tensor:
    """p_i ~ Beta(a, b) = X / (X + Y), X ~ Gamma(a), Y ~ Gamma(b), keyed on (seed, agent). -> [B, n] float32"""
    x, y = gamma_draws(a, seeds, n, 0), gamma_draws(b, seeds, n, 1)
    return (x / (x + y)).to(torch.float32)


def check_types(types, n: int) -> list[dict]:
    """trial.types -> [{share, name, p or None, k or None}], checked (one-line errors)."""
    need(not isinstance(types, (str, Mapping)) and hasattr(types, "__len__") and len(types) >= 1, "trial.types",
         types, "null, or a list of {share: s, p: ..., k: ..., name: ...} with shares summing to 1")
    out = []
    for i, t in enumerate(types):
        need(isinstance(t, Mapping), "trial.types", schedules.plain(types), "a list of mappings {share: s, ...}")
        extra = set(t) - {"share", "p", "k", "name"}
        need(not extra, f"trial.types[{i}]", schedules.plain(t), "keys share, p, k, name only")
        share = t.get("share")
        need(is_num(share) and 0 <= share <= 1, f"trial.types[{i}].share", share, "a number in [0, 1]")
        p, k = t.get("p"), t.get("k")
        need(p is None or (is_num(p) and 0 <= p <= 1), f"trial.types[{i}].p", p, "a probability in [0, 1]")
        need(k is None or (is_num(k) and float(k).is_integer() and 1 <= k < n), f"trial.types[{i}].k", k,
             f"an integer with 1 <= k < trial.n={n}")
        name = str(t.get("name") or f"type{i}")
        out.append({"share": float(share), "p": p, "k": None if k is None else int(k), "name": name})
    total = sum(t["share"] for t in out)
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"trial.types shares sum to {total:g}, not 1: the shares are fractions of the population")
    names = [t["name"] for t in out]
    need(len(set(names)) == len(names), "trial.types", names, "distinct type names")
    return out


def _noise_values(noise) -> list[float]:
    values = as_list(0.0 if noise is None else noise)
    need(len(values) >= 1, "trial.noise", values, "a probability or a non-empty list")
    for v in values:
        need(is_num(v) and 0 <= v <= 1, "trial.noise", v, "a probability in [0, 1] (a number or a list)")
    return [float(v) for v in values]


def per_agent_values(seeds: torch.Tensor, n: int, type_list: list[dict] | None, beta_rows: list) -> dict:
    """Populations' per-agent fields: each agent's type, and its own p / k where its type sets one or p is a
    Beta draw (beta_rows[b] = (a, b) or None per population). seeds: [B] -> {name: [B, n] tensor, type_names}"""
    B = seeds.numel()
    agent_type = torch.zeros(B, n, dtype=torch.int64)
    names = ("all",)
    if type_list is not None:
        agent_type = assign_types(seeds, type_counts([t["share"] for t in type_list], n))
        names = tuple(t["name"] for t in type_list)
    p_agent = torch.zeros(B, n, dtype=torch.float32)
    p_own = torch.zeros(B, n, dtype=torch.bool)
    for ab in {ab for ab in beta_rows if ab is not None}:  # one batched draw per distinct (a, b)
        rows = torch.tensor([b for b, x in enumerate(beta_rows) if x == ab])
        p_agent[rows] = beta_draws(*ab, seeds[rows], n)
        p_own[rows] = True
    k_agent = torch.zeros(B, n, dtype=torch.int64)
    k_own = torch.zeros(B, n, dtype=torch.bool)
    for c, t in enumerate(type_list or []):  # a type's own value replaces a Beta draw
        is_c = agent_type == c  # [B, n]
        if t["p"] is not None:
            p_agent = torch.where(is_c, torch.tensor(float(t["p"]), dtype=torch.float32), p_agent)
            p_own |= is_c
        if t["k"] is not None:
            k_agent = torch.where(is_c, torch.tensor(t["k"]), k_agent)
            k_own |= is_c
    out = dict(agent_type=agent_type, type_names=names, p_own=p_own, p_agent=p_agent)
    if bool(k_own.any()):
        out.update(k_own=k_own, k_agent=k_agent)
    return out


def build_populations(ks, ps, replicas: int, seed: int, *, steps: int = 1, n: int | None = None, types=None,
                      noise=0.0, noise_mode: str = "drop", graph="knn") -> Populations:
    """Cells are the product ks x ps x noise x graph (k outer); replica r of every cell gets seed mix(seed, r).
    ks, ps: values or lists of values (numbers, schedules; ps also {beta: [a, b]}); n is needed for
    per-agent values (types, Beta) and to check k. Raises a one-line UserError for any bad value."""
    kl, pl, nl = as_list(ks), as_list(ps), _noise_values(noise)
    need(len(kl) >= 1, "trial.k", kl, "a number, a schedule or a non-empty list of them")
    need(len(pl) >= 1, "trial.p", pl, "a number, a schedule, {beta: [a, b]} or a non-empty list of them")
    need(noise_mode in NOISE_MODES, "trial.noise_mode", noise_mode, f"one of {', '.join(NOISE_MODES)}")
    n_check = n if n is not None else 1 << 62
    k_rows = [schedules.k_values(k, steps, n_check) for k in kl]  # each [T] int64
    p_rows, betas = [], []
    for p in pl:
        if is_beta(p):
            need(n is not None, "trial.p", schedules.plain(p), "a number or a schedule here (no agent count)")
            betas.append(beta_params("trial.p", p))
            p_rows.append(torch.full((steps,), float("nan"), dtype=torch.float32))  # every agent has its own
        else:
            betas.append(None)
            p_rows.append(schedules.p_values(p, steps))
    gl = as_list(graph)
    need(len(gl) >= 1, "trial.graph", gl, f"{social.FORMS}, or a non-empty list of them")
    if n is not None:
        for g in gl:
            social.parse(g, n)  # one-line errors before anything is drawn
    swept_noise, swept_graph = len(nl) > 1, len(gl) > 1
    combos = list(itertools.product(range(len(kl)), range(len(pl)), range(len(nl)), range(len(gl))))
    cells = [(cell_label(kl[a], int), cell_label(pl[b])) + ((nl[c],) if swept_noise else ())
             + ((social.label(gl[g]),) if swept_graph else ()) for a, b, c, g in combos]
    keys = ("k", "p") + (("noise",) if swept_noise else ()) + (("graph",) if swept_graph else ())
    B = len(combos) * replicas
    cell = torch.arange(B) // replicas
    replica = torch.arange(B) % replicas
    seeds = rng.mix(seed, replica)
    of = [combos[c] for c in cell.tolist()]
    k_steps = torch.stack([k_rows[a] for a, _, _, _ in of])  # [B, T]
    p_steps = torch.stack([p_rows[b] for _, b, _, _ in of])  # [B, T]
    noise_t = torch.tensor([nl[c] for _, _, c, _ in of], dtype=torch.float32)  # [B]
    graphs = social.build(gl, [g for _, _, _, g in of], seeds, n) if n is not None else None

    type_list = check_types(types, n) if types is not None else None
    beta_rows = [betas[b] for _, b, _, _ in of]
    per_agent = per_agent_values(seeds, n, type_list, beta_rows) if type_list or any(beta_rows) else {}
    for b, ab in enumerate(beta_rows):
        if ab is not None:  # p_t of a Beta cell: the mean of its agents' p, as with types
            p_steps[b] = per_agent["p_agent"][b].mean()
    k_max = k_steps.max(-1).values  # [B]
    if "k_agent" in per_agent:
        k_max = torch.maximum(k_max, torch.where(per_agent["k_own"], per_agent["k_agent"], 0).max(-1).values)
    p0 = p_steps[:, 0]
    return Populations(k_max, p0, seeds, cell, replica, cells, keys, k_steps, p_steps,
                       noise=noise_t if any(nl) else None, noise_mode=noise_mode, graphs=graphs, **per_agent)


def trial_populations(trial, seed: int) -> Populations:
    """The populations a trial config describes (trial.k, p, replicas, steps, n, types, noise, noise_mode, graph)."""
    return build_populations(trial.k, trial.p, int(trial.replicas), seed, steps=int(trial.steps), n=int(trial.n),
                             types=trial.get("types"), noise=trial.get("noise", 0.0),
                             noise_mode=trial.get("noise_mode", "drop"), graph=trial.get("graph", "knn"))
