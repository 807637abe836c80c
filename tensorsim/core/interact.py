"""The mirror/share decision of docs/SPEC.md §1 step 6 as one masked tensor update."""
from __future__ import annotations

import torch

from . import rng


def per_agent(x: torch.Tensor) -> torch.Tensor:
    """A value per population [B] or per agent [B, n] -> broadcastable against [B, n]."""
    return x if x.dim() == 2 else x[:, None]


def mirror_coins(seeds: torch.Tensor, p: torch.Tensor, t: int, n: int) -> torch.Tensor:
    """mirror_i ~ Bernoulli(p), one coin per agent. seeds: [B]; p: [B] or per agent [B, n] -> [B, n] bool."""
    agent = torch.arange(n, device=seeds.device)
    u = rng.uniform(seeds[:, None], rng.COIN, t, agent[None, :])  # [B, n]
    return u < per_agent(p)


def pick_partners(seeds: torch.Tensor, neighbours: torch.Tensor, k: torch.Tensor, t: int) -> torch.Tensor:
    """Uniform pick among each agent's k_b nearest.
    neighbours: [B, n, K] with K >= max k, nearest first; k: [B] or per agent [B, n] -> partner [B, n]."""
    B, n, _ = neighbours.shape
    agent = torch.arange(n, device=neighbours.device)
    u = rng.uniform(seeds[:, None], rng.PARTNER, t, agent[None, :])  # [B, n]
    k = per_agent(k)
    slot = (u * k).long().clamp_max(k - 1)  # floor(u * k) in [0, k)
    return torch.gather(neighbours, -1, slot[..., None]).squeeze(-1)


def context_sources(mirrored: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Whose answer each agent takes into its context slot: its own where mirrored, else its partner's.
    mirrored, partner: [B, n] -> [B, n] agent index within the population."""
    own = torch.arange(partner.shape[-1], device=partner.device).expand_as(partner)
    return torch.where(mirrored, own, partner)


def garble_coins(seeds: torch.Tensor, noise: torch.Tensor, t: int, n: int) -> torch.Tensor:
    """Miscommunication: garbled_i ~ Bernoulli(noise_b), on its own stream so that the coins and partners of
    a noisy run are those of the same run without noise. seeds, noise: [B] -> [B, n] bool."""
    agent = torch.arange(n, device=seeds.device)
    return rng.uniform(seeds[:, None], rng.NOISE, t, agent[None, :]) < noise[:, None]


def noise_picks(seeds: torch.Tensor, stream: int, t: int, n: int, count: int) -> torch.Tensor:
    """What a garbled message is replaced by: an index uniform in [0, count) per agent. seeds: [B] -> [B, n]."""
    agent = torch.arange(n, device=seeds.device)
    u = rng.uniform(seeds[:, None], stream, t, agent[None, :])  # [B, n]
    return (u * count).long().clamp_max(count - 1)
