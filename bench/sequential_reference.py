"""A faithful sequential reference of the authors' loop (arXiv 2412.06834): one generate call per agent
per step, one embedding call per answer, pairwise distances and neighbour lists in Python loops, the
update in a Python loop. This is the baseline tensorsim is measured against; it lives only here."""
from __future__ import annotations

import math
import random

import torch
from transformers import StoppingCriteria, StoppingCriteriaList


class StopOnTokens(StoppingCriteria):
    """Same stopping rule as the engine (EOS or end of sentence), so both do the same work per answer."""

    def __init__(self, stop_ids: torch.Tensor):
        self.stop_ids = stop_ids

    def __call__(self, input_ids, scores, **kwargs):
        return self.stop_ids[input_ids[:, -1]]


class SequentialSimulation:
    def __init__(self, cfg, kb, model, tokenizer, embedder, prompts, stop_ids, seed: int = 0):
        self.cfg, self.model, self.tok, self.embedder, self.prompts = cfg, model, tokenizer, embedder, prompts
        self.n, self.k, self.p = cfg.trial.n, int(cfg.trial.k), float(cfg.trial.p)
        self.random = random.Random(seed)
        torch.manual_seed(seed)
        self.stop = StoppingCriteriaList([StopOnTokens(stop_ids)])
        # retrieval: the flower slot of each agent (the engine's tests check it is the flower entry)
        self.contexts = [row[kb.topic_slot] for row in kb.answers[: self.n]]
        self.new_tokens = 0
        self.prompt_tokens = 0  # prefilled, summed over generate calls
        self.calls = 0  # generate calls (one prefill forward each; every further token one decode forward)

    def answer(self, context: str) -> str:
        g = self.cfg.generation
        for _ in range(1 + g.max_retries):
            ids = torch.tensor([self.prompts([context])[0]])
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                                      stopping_criteria=self.stop, pad_token_id=self.tok.pad_token_id)
            new = out[0, ids.shape[1]:].tolist()
            self.new_tokens += len(new)
            self.prompt_tokens += ids.shape[1]
            self.calls += 1
            text = self.prompts.response([t for t in new if t != self.tok.eos_token_id])
            if self.cfg.prompt.required_phrase.lower() in text.lower():
                break
        return text

    def step(self) -> list[str]:
        n = self.n
        mirror = [self.random.random() < self.p for _ in range(n)]
        responses = [self.answer(self.contexts[i]) for i in range(n)]
        x = [self.embedder.responses([r])[0].tolist() for r in responses]  # one call per answer
        D = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j]))) for j in range(n)] for i in range(n)]
        for i in range(n):
            neighbours = sorted((j for j in range(n) if j != i), key=lambda j: (D[i][j], j))[: self.k]
            self.contexts[i] = responses[i] if mirror[i] else responses[self.random.choice(neighbours)]
        return responses
