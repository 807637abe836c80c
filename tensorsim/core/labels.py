"""Labelers: which flower (silo) an answer belongs to. Label -1 = unlabeled, its own group."""
from __future__ import annotations

import re

import torch

UNLABELED = -1


class NameLabeler:
    """docs/SPEC.md §1: lower-case the text, find every known name, take the earliest; at the same position the
    longer name wins ("calla lily" over "lily"). A name must start a word, so "prose" is not a rose
    but "roses" is."""

    def __init__(self, names: list[str]):
        if not names:
            raise ValueError("NameLabeler needs at least one name")
        self.names = list(names)
        lowered = [n.lower() for n in self.names]
        self._index = {name: i for i, name in enumerate(lowered)}
        # The regex engine tries alternatives left to right at the leftmost match position, so
        # listing longer names first makes the longer name win a tie at the same position.
        alternatives = sorted(self._index, key=len, reverse=True)
        self._pattern = re.compile(r"(?<![a-z])(" + "|".join(re.escape(a) for a in alternatives) + ")")

    def label_one(self, text: str) -> int:
        m = self._pattern.search(text.lower())
        return self._index[m.group(1)] if m else UNLABELED

    def all_labels(self, text: str) -> set[int]:
        """Every label the text names (an answer's own label is the earliest of them)."""
        return {self._index[m.group(1)] for m in self._pattern.finditer(text.lower())}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """texts: N strings -> [N] int64"""
        return torch.tensor([self.label_one(t) for t in texts], dtype=torch.int64)


class CentroidLabeler:
    """Name-free labeler: nearest centroid, in embedding space, of the reference answers of each label."""

    def __init__(self, reference: torch.Tensor, reference_labels: torch.Tensor, num_labels: int):
        # reference: [M, d] embeddings of labelled answers; reference_labels: [M] in [0, num_labels).
        # The centroids live on the reference's device (the embedder's), wherever the labels come from.
        d, dev = reference.shape[-1], reference.device
        labels = reference_labels.to(dev)
        sums = torch.zeros(num_labels, d, dtype=reference.dtype, device=dev).index_add_(0, labels, reference)
        counts = torch.bincount(labels, minlength=num_labels).clamp_min(1)
        self.centroids = sums / counts[:, None].to(reference.dtype)  # [L, d]

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings: [..., d] -> [...] int64"""
        c = self.centroids.to(embeddings)
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        return torch.cdist(flat, c).argmin(-1).reshape(embeddings.shape[:-1])
