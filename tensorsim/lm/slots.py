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
    until compact() drops it. Slots are named by host lists: choosing them never waits on the device.

    capacity: own tokens per row, allocated at once (on an accelerator: the longest prompt plus the
    answer budget, what memory_budget_gb counts, since growing would hold two copies while it
    copies); None grows the cache in chunks of KVCache.GROW as rows lengthen (CPU: memory is touched
    only as it is used)."""

    def __init__(self, fast: FastLlama, slots: int, prefix: KVCache | None, graphed: GraphedDecode | None = None,
                 capacity: int | None = None):
        self.fast, self.prefix, self.graphed = fast, prefix, graphed
        self.cache: KVCache | None = None
        self.free = list(range(slots))  # slots no row holds, lowest first
        # compact once this share of the slots is dead; with CUDA graphs every compaction costs a new
        # capture (about two eager passes), while a dead row costs a bandwidth-bound GPU pass little
        self.compact_share = 2 if graphed is not None else 4
        self.slots = slots
        self.capacity = None if capacity is None else chunks(capacity)

    def _room(self, length: int) -> None:
        """A cache whose rows can hold `length` own tokens (created on first use, grown in chunks)."""
        capacity = chunks(length + 1)
        if self.capacity is not None:
            if capacity > self.capacity:
                raise ValueError(f"a {length}-token prompt does not fit the slots' capacity of {self.capacity}")
            capacity = self.capacity
        if self.cache is None:
            f = self.fast
            k = torch.zeros(len(f.layers), self.slots, f.H_kv, capacity, f.D, dtype=f.dtype, device=f.device)
            lengths = torch.zeros(self.slots, dtype=torch.long, device=f.device)
            prefix_k, prefix_v = (self.prefix.prefix_k, self.prefix.prefix_v) if self.prefix else (None, None)
            self.cache = KVCache(prefix_k, prefix_v, k, torch.zeros_like(k), lengths,
                                 torch.zeros(self.slots, dtype=torch.long))
        elif self.cache.k.shape[3] < length:
            self.cache = self.cache.reshaped(None, capacity)

    def admit(self, seqs: list[list[int]], inverse: list[int], agents: torch.Tensor | None = None
              ) -> tuple[list[int], torch.Tensor]:
        """Prefills the distinct sequences `seqs` once each and gives row i (sequence inverse[i]) a free
        slot holding that sequence's KV. agents: [len(seqs)] each sequence's adapter (FastLlama.adapters).
        -> (slots: R ints, logits [R, V])."""
        R = len(inverse)
        if R > len(self.free):
            raise ValueError(f"{R} rows admitted but {len(self.free)} slots free")
        slots = self.free[:R]
        del self.free[:R]
        self._room(max(len(s) for s in seqs))
        first: dict[int, int] = {}  # sequence -> the first row asking it (prefilled into that row's slot)
        for i, u in enumerate(inverse):
            first.setdefault(u, i)
        logits, self.cache = self.fast.prefill(seqs, self.prefix, into=self.cache,
                                               slots=torch.tensor([slots[first[u]] for u in range(len(seqs))]),
                                               agents=agents)
        copies = [(slots[first[u]], slots[i]) for i, u in enumerate(inverse) if first[u] != i]  # repeated prompts
        if copies:
            src, dst = (torch.tensor(c) for c in zip(*copies))
            S = int(self.cache.host_lengths[src].max())
            src_d, dst_d = src.to(self.fast.device), dst.to(self.fast.device)
            self.cache.k[:, dst_d, :, :S] = self.cache.k[:, src_d, :, :S]
            self.cache.v[:, dst_d, :, :S] = self.cache.v[:, src_d, :, :S]
            self.cache.set_lengths(dst.tolist(), self.cache.host_lengths[src])
            if self.cache.agent is not None:
                self.cache.agent[dst_d] = self.cache.agent[src_d]
        return slots, logits[torch.tensor(inverse).to(logits.device, non_blocking=True)]

    def release(self, slots: list[int]) -> None:
        """The answers in `slots` have ended: their slots become free."""
        if self.cache is not None:
            # a dead row must not widen the span every row attends
            self.cache.set_lengths(slots, torch.zeros(len(slots), dtype=torch.long))
        self.free = sorted(self.free + list(slots))

    def decode(self, active: list[int], tokens: torch.Tensor) -> torch.Tensor:
        """One token for each active slot. active: A slots, tokens: [A] -> logits [A, V] in active's order."""
        if self.capacity is None:
            self.cache = self.cache.ensure_room()
        elif self.cache.used() >= self.capacity:  # cannot happen: rows end within their answer budget
            raise RuntimeError(f"a row outgrew the slots' capacity of {self.capacity} tokens")
        if active == list(range(self.cache.rows)):
            full, live = tokens, None
        else:
            live = torch.tensor(active).to(tokens.device, non_blocking=True)
            full = tokens.new_zeros(self.cache.rows)
            full[live] = tokens
        if self.graphed is not None:
            return self.graphed(full, self.cache, live)
        return self.fast.decode(full, self.cache, live)

    def compact(self, active: list[int]) -> list[int]:
        """Once nothing waits: drops the free slots when they are 1/compact_share of the cache (one
        copy), so passes stop computing dead rows. -> active's slots after compaction."""
        dead = self.cache.rows - len(active)
        if dead < max(1, self.cache.rows // self.compact_share):
            return active
        kept = sorted(active)
        self.cache = self.cache.reshaped(torch.tensor(kept), self.cache.k.shape[3])
        self.slots = len(kept)
        self.free = []
        rank = {s: j for j, s in enumerate(kept)}
        return [rank[s] for s in active]


def chunks(length: int) -> int:
    """length rounded up to a multiple of KVCache.GROW."""
    return -(-length // KVCache.GROW) * KVCache.GROW
