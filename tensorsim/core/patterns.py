"""Silo patterns over a final window (docs/SPEC.md §1; the paper's thresholds are not public, these are ours).

Run pattern, first rule that applies, over the last W steps:
  single    n_silos at the last step is 1 (consensus, E = 0)
  stable    S(t) >= stable_min_stability at every step after the window's first (membership frozen)
  decaying  silos die out: n_silos falls by >= decay_min_silo_drop across the window, or E falls by
            >= decay_min_entropy_drop nats
  unstable  otherwise: members keep moving between silos without silos dying out
Silo pattern, for every label present at some step of the window:
  single    the only silo left at the last step
  stable    the same members at every step of the window
  decaying  fewer members at the last step than at the window's first (dying out included)
  unstable  otherwise (members swapped in and out, or it grew)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PATTERNS = ("single", "stable", "unstable", "decaying")


@dataclass(frozen=True)
class PatternRules:
    window: int = 20
    stable_min_stability: float = 1.0
    decay_min_silo_drop: int = 1
    decay_min_entropy_drop: float = 0.1


def run_pattern(stability: list[float], n_silos: list[int], entropy: list[float], rules: PatternRules) -> str:
    """Series over t = 0..T-1 of one population (stability[0] is undefined and ignored)."""
    T = len(n_silos)
    w0 = max(0, T - rules.window)
    if n_silos[-1] == 1:
        return "single"
    window_s = [stability[t] for t in range(w0 + 1, T)]  # changes between steps of the window
    if window_s and min(window_s) >= rules.stable_min_stability:
        return "stable"
    if (n_silos[w0] - n_silos[-1] >= rules.decay_min_silo_drop
            or entropy[w0] - entropy[-1] >= rules.decay_min_entropy_drop):
        return "decaying"
    return "unstable"


def silo_patterns(labels: torch.Tensor, rules: PatternRules, names: list[str]) -> list[dict]:
    """labels: [T, n] of one population -> one record per silo present in the final window."""
    T = labels.shape[0]
    window = labels[max(0, T - rules.window):]  # [W, n]
    final_labels = window[-1].unique()
    records = []
    for label in window.unique().tolist():
        members = window == label  # [W, n]
        sizes = members.sum(-1)
        start, end = int(sizes[0]), int(sizes[-1])
        if len(final_labels) == 1 and end > 0:
            pattern = "single"
        elif bool((members == members[0]).all()):
            pattern = "stable"
        elif end < start:
            pattern = "decaying"
        else:
            pattern = "unstable"
        records.append({"label": label, "name": label_name(label, names), "size_start": start,
                        "size_end": end, "pattern": pattern})
    return records


def last_change_step(stability: list[float]) -> int:
    """Last step t at which some agent changed label (0 if none ever did)."""
    changed = [t for t in range(1, len(stability)) if stability[t] < 1.0]
    return changed[-1] if changed else 0


def label_name(label: int, names: list[str]) -> str:
    return names[label] if 0 <= label < len(names) else "unlabeled"
