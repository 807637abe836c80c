"""Population metrics of docs/SPEC.md §1 on label tensors. labels: [B, n] int64, -1 = unlabeled (its own group)."""
from __future__ import annotations

import torch


def label_counts(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """[B, n] -> [B, num_labels + 1] agents per label; column 0 counts the unlabeled."""
    B = labels.shape[0]
    counts = torch.zeros(B, num_labels + 1, dtype=torch.int64, device=labels.device)
    return counts.scatter_add_(1, labels + 1, torch.ones_like(labels))


def n_silos(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Number of distinct labels present (unlabeled counts as one group). -> [B]"""
    return (label_counts(labels, num_labels) > 0).sum(-1)


def entropy(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """E = -sum_c pi_c ln pi_c in nats. -> [B] float64"""
    pi = label_counts(labels, num_labels).double() / labels.shape[-1]
    return -torch.xlogy(pi, pi).sum(-1) + 0.0  # + 0.0 turns the "-0.0" of a single silo into 0.0


def stability(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """S(t) = share of agents whose label did not change since t-1. -> [B] float64"""
    return (previous == current).double().mean(-1)
