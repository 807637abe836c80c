"""The mirror/share decision of docs/SPEC.md §1 step 6 as one masked tensor update."""
from __future__ import annotations

import torch

from . import rng


def mirror_coins(seeds: torch.Tensor, p: torch.Tensor, t: int, n: int) -> torch.Tensor:
    """mirror_i ~ Bernoulli(p_b), one coin per agent. seeds, p: [B] -> [B, n] bool."""
    agent = torch.arange(n, device=seeds.device)
    u = rng.uniform(seeds[:, None], rng.COIN, t, agent[None, :])  # [B, n]
    return u < p[:, None]


def pick_partners(seeds: torch.Tensor, neighbours: torch.Tensor, k: torch.Tensor, t: int) -> torch.Tensor:
    """Uniform pick among each agent's k_b nearest.
    neighbours: [B, n, K] with K >= max k_b, nearest first; k: [B] -> partner [B, n]."""
    B, n, _ = neighbours.shape
    agent = torch.arange(n, device=neighbours.device)
    u = rng.uniform(seeds[:, None], rng.PARTNER, t, agent[None, :])  # [B, n]
    slot = (u * k[:, None]).long().clamp_max(k[:, None] - 1)  # floor(u * k_b) in [0, k_b)
    return torch.gather(neighbours, -1, slot[..., None]).squeeze(-1)


def context_sources(mirrored: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Whose answer each agent takes into its context slot: its own where mirrored, else its partner's.
    mirrored, partner: [B, n] -> [B, n] agent index within the population."""
    own = torch.arange(partner.shape[-1], device=partner.device).expand_as(partner)
    return torch.where(mirrored, own, partner)
