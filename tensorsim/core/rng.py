"""Counter-based random numbers.

Every random draw is a pure function of (population seed, stream, step, agent, ...). A population's
trajectory therefore does not depend on which other populations share its batch, how the batch is
micro-batched, or whether the run was resumed from a checkpoint: there is no generator state to carry.

The hash works on int64 tensors holding 32-bit values: products wrap modulo 2**64, but their low
32 bits are exact, which is all the mask keeps.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF

# Streams: one per kind of decision, so that e.g. coins and partner picks are independent.
COIN, PARTNER, TOKEN, GMM_QUERY, GMM_ANSWER, GMM_INIT, GMM_PICK = range(1, 8)
# experiment dimensions (README "Asking your own question"): agent types, Beta draws of p, noise
TYPE, BETA, NOISE, NOISE_PICK, NOISE_SLOT = range(101, 106)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Avalanche a tensor of 32-bit values (lowbias32 finaliser)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    x = x ^ (x >> 16)
    return x


def mix(*keys) -> torch.Tensor:
    """Fold keys (ints or broadcastable int64 tensors) into one 32-bit hash tensor."""
    h = torch.as_tensor(0x9E3779B9, dtype=torch.int64)
    for k in keys:
        # 0-dim CPU tensors broadcast against tensors on any device
        k = torch.as_tensor(k, dtype=torch.int64)
        h = hash32(h ^ hash32(k + 0x632BE5AB))
    return h


def uniform(*keys) -> torch.Tensor:
    """U[0, 1) float32 with 24 random bits, one per broadcast element of the keys."""
    return (mix(*keys) >> 8).to(torch.float32) * (1.0 / (1 << 24))


def uniform64(*keys) -> torch.Tensor:
    """U(0, 1) float64 with 52 random bits (two hashes), never exactly 0 or 1: safe for ndtri/log."""
    hi = mix(*keys, 0x51ED27) >> 6  # 26 bits
    lo = mix(*keys, 0x2C1B3C) >> 6  # 26 bits
    return ((hi << 26 | lo).to(torch.float64) + 0.5) * (1.0 / (1 << 52))


def normal(*keys) -> torch.Tensor:
    """Standard normal float64 by the inverse CDF of a 52-bit uniform."""
    return torch.special.ndtri(uniform64(*keys))
