"""The packed populations of one run: B = cells x replicas, each with its own k, p and seed.

A population's seed depends on the run seed and its replica index only, not on its cell or position
in the batch, so a (k, p) cell simulated alone draws the same coins, partners and tokens as the same
cell packed into a grid (and cells of one grid share random numbers replica by replica: common
random numbers, which sharpen comparisons between cells).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from . import rng


@dataclass(frozen=True)
class Populations:
    k: torch.Tensor  # [B] int64
    p: torch.Tensor  # [B] float32
    seeds: torch.Tensor  # [B] int64
    cell: torch.Tensor  # [B] int64, index into cells
    replica: torch.Tensor  # [B] int64
    cells: list[tuple[int, float]]  # (k, p) of each cell

    @property
    def B(self) -> int:
        return int(self.k.numel())

    def to(self, device) -> "Populations":
        return Populations(self.k.to(device), self.p.to(device), self.seeds.to(device), self.cell.to(device),
                           self.replica.to(device), self.cells)


def as_list(value) -> list:
    """A scalar or a sequence (list, tuple, OmegaConf ListConfig) -> list."""
    return [value] if isinstance(value, (int, float, str)) else list(value)


def build_populations(ks, ps, replicas: int, seed: int) -> Populations:
    """Cells are the product ks x ps (k outer); replica r of every cell gets seed mix(seed, r)."""
    cells = [(int(k), float(p)) for k, p in itertools.product(as_list(ks), as_list(ps))]
    B = len(cells) * replicas
    cell = torch.arange(B) // replicas
    replica = torch.arange(B) % replicas
    k = torch.tensor([cells[c][0] for c in cell.tolist()], dtype=torch.int64)
    p = torch.tensor([cells[c][1] for c in cell.tolist()], dtype=torch.float32)
    return Populations(k, p, rng.mix(seed, replica), cell, replica, cells)
