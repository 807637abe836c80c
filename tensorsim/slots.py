"""Continuous batching on the fast engine: the KV cache is a fixed set of row slots, and the slot of an
answer that has ended goes to the next waiting prompt instead of idling until its micro-batch ends.

Why: answers are one sentence of 8 to 120 tokens. In fixed micro-batches every batch ends in a tail of
a few long answers decoded a few rows per pass, the costliest shape per token (on 2 CPU cores a 3-row
pass took 100 ms against 157 ms for 30 rows; on a GPU reading the weights costs the same at any row
count). Refilled, a call that needs many batches has one tail instead of one per batch.
A row's tokens depend only on its prompt and its key (tensorsim.rng), so neither the order rows are
admitted in nor the number of slots changes an answer.
"""
from __future__ import annotations

import torch

from .llama import FastLlama, GraphedDecode, KVCache


class SlotCache:
    """A KV cache of `slots` rows after one shared prefix. Rows are admitted (prefilled) into free
    slots, decoded together, and freed when their answer ends. A freed slot rides along in decode
    passes (its logits are not computed) until a waiting prompt takes it, or, once nothing waits,
    until compact() drops it."""

    def __init__(self, fast: FastLlama, slots: int, prefix: KVCache | None, graphed: GraphedDecode | None = None):
        self.fast, self.prefix, self.graphed = fast, prefix, graphed
        self.cache: KVCache | None = None
        self.free = list(range(slots))  # slots no row holds, lowest first
        # compact once this share of the slots is dead; with CUDA graphs every compaction costs a new
        # capture (about two eager passes), while a dead row costs a bandwidth-bound GPU pass little
        self.compact_share = 2 if graphed is not None else 4
        self.slots = slots

    def _room(self, length: int) -> None:
        """A cache whose rows can hold `length` own tokens (created on first use, grown in chunks)."""
        capacity = -(-(length + 1) // KVCache.GROW) * KVCache.GROW
        if self.cache is None:
            f = self.fast
            k = torch.zeros(len(f.layers), self.slots, f.H_kv, capacity, f.D, dtype=f.dtype, device=f.device)
            lengths = torch.zeros(self.slots, dtype=torch.long, device=f.device)
            prefix_k, prefix_v = (self.prefix.prefix_k, self.prefix.prefix_v) if self.prefix else (None, None)
            self.cache = KVCache(prefix_k, prefix_v, k, torch.zeros_like(k), lengths)
        elif self.cache.k.shape[3] < length:
            self.cache = self.cache.reshaped(None, capacity)

    def admit(self, seqs: list[list[int]], inverse: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefills the distinct sequences `seqs` once each and gives row i (sequence inverse[i]) a free
        slot holding that sequence's KV. -> (slots [R], logits [R, V])."""
        R = len(inverse)
        if R > len(self.free):
            raise ValueError(f"{R} rows admitted but {len(self.free)} slots free")
        dev = self.fast.device
        slots = torch.tensor(self.free[:R], device=dev)
        del self.free[:R]
        self._room(max(len(s) for s in seqs))
        inv = torch.tensor(inverse, device=dev)
        first = torch.full((len(seqs),), R, device=dev).scatter_reduce(0, inv, torch.arange(R, device=dev), "amin")
        logits, self.cache = self.fast.prefill(seqs, self.prefix, into=self.cache, slots=slots[first])
        copies = (first[inv] != torch.arange(R, device=dev)).nonzero().squeeze(-1)  # repeated prompts
        if copies.numel():
            src, dst = slots[first[inv[copies]]], slots[copies]
            S = int(self.cache.lengths[src].max())
            self.cache.k[:, dst, :, :S] = self.cache.k[:, src, :, :S]
            self.cache.v[:, dst, :, :S] = self.cache.v[:, src, :, :S]
            self.cache.lengths[dst] = self.cache.lengths[src]
        return slots, logits[inv]

    def release(self, slots: torch.Tensor) -> None:
        """The answers in `slots` have ended: their slots become free."""
        if self.cache is not None:
            self.cache.lengths[slots] = 0  # a dead row must not widen the span every row attends
        self.free = sorted(self.free + slots.tolist())

    def decode(self, active: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One token for each active slot. active, tokens: [A] -> logits [A, V] in active's order."""
        self.cache = self.cache.ensure_room()
        full = tokens.new_zeros(self.cache.rows)
        full[active] = tokens
        everyone = active.numel() == self.cache.rows and bool((active == torch.arange(
            self.cache.rows, device=active.device)).all())
        live = None if everyone else active
        if self.graphed is not None:
            return self.graphed(full, self.cache, live)
        return self.fast.decode(full, self.cache, live)

    def compact(self, active: torch.Tensor) -> torch.Tensor:
        """Once nothing waits: drops the free slots when they are 1/compact_share of the cache (one
        copy), so passes stop computing dead rows. -> active's slots after compaction."""
        dead = self.cache.rows - active.numel()
        if dead < max(1, self.cache.rows // self.compact_share):
            return active
        kept, order = torch.sort(active)
        self.cache = self.cache.reshaped(kept, self.cache.k.shape[3])
        self.slots = kept.numel()
        self.free = []
        return torch.empty_like(order).scatter_(0, order, torch.arange(kept.numel(), device=kept.device))
