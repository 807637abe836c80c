"""What one synchronous step of any agent kind hands to the runner."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepRecord:
    labels: torch.Tensor  # [B, n] int64, -1 = unlabeled; the silo of each agent's answer at step t
    partner: torch.Tensor  # [B, n] int64, whose answer agent i takes in: itself where mirrored
    mirrored: torch.Tensor  # [B, n] bool
    garbled: torch.Tensor | None = None  # [B, n] bool: the message agent i received was garbled (trial.noise)
    contexts: list[str] | None = None  # B*n, row-major [b, i]: the context each agent answered from
    responses: list[str] | None = None  # B*n, the answers
    new_tokens: int = 0
    generations: int = 0  # generate calls' rows, retries included
    protocol: dict[str, torch.Tensor] | None = None  # per population [B] int64: answer-protocol counters
    extra: dict = field(default_factory=dict)
