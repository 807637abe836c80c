"""LLM agents that learn (issue 15): every agent is the shared LLM plus its own LoRA adapter.

A step is the LLM agents' step (agents/llm.py: retrieve, generate, embed, neighbours, mirror coins and
partners), with each agent generating through its own adapter; then every agent takes
agents.train_steps optimizer steps on the answer it received (its own where mirrored, its partner's
otherwise), written after the prompt it answered, with the loss on the answer's tokens only. All B*n
adapters are stacked tensors and train in one batched forward and backward (tensorsim/lm/lora.py).
With agents.context=true the received answer also goes into the context slot, as for LLM agents.

Per step and agent it records the training loss, the norm of the adapter's weight update
||B'A' - BA||_F, and its mean cosine distance to the other adapters of its population (flattened B A)
next to the mean cosine distance of its answer's embedding to the others' (drift.csv, summary.json).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError, is_int, is_num, need
from ..lm.lora import (PARENT, TARGETS, Adam, StackedLoRA, adapter_bytes, adapter_gram, cosine_distances,
                       mean_off_diagonal, train_step, training_rows, update_norms)
from . import llm
from .llm import LLMAgents

WRITES_TEXT = True
transcript_estimate = llm.transcript_estimate  # the same rows as LLM agents' (outputs.table_bytes_estimate)
ADAPTERS = "adapters.safetensors"
DRIFT = "drift.csv"
DRIFT_COLUMNS = ("loss", "update_norm", "adapter_distance", "answer_distance")


def uses_graph(cfg) -> bool:
    return True


def validate(cfg) -> None:
    llm.validate(cfg)
    a = cfg.agents
    need(is_int(a.rank) and a.rank >= 1, "agents.rank", a.rank, "an integer >= 1")
    need(is_num(a.alpha) and a.alpha > 0, "agents.alpha", a.alpha, "a number > 0 (the update is scaled by alpha/rank)")
    need(is_num(a.lr) and a.lr > 0, "agents.lr", a.lr, "a number > 0")
    need(is_int(a.train_steps) and a.train_steps >= 0, "agents.train_steps", a.train_steps,
         "an integer >= 0 (0 = the adapters never change)")
    need(isinstance(a.context, bool), "agents.context", a.context, "true or false")
    targets = a.target_modules
    need(not isinstance(targets, str) and len(targets) >= 1, "agents.target_modules", targets,
         f"a non-empty list of {', '.join(TARGETS)}")
    for t in targets:
        need(t in TARGETS, "agents.target_modules", t, f"one of {', '.join(TARGETS)}")
    need(len(set(targets)) == len(targets), "agents.target_modules", list(targets), "each module once")
    rows = a.get("train_rows")
    need(rows is None or (is_int(rows) and rows >= 1), "agents.train_rows", rows,
         "null (sized from generation.memory_budget_gb) or an integer >= 1")


def build(cfg, pops, device, dtype):
    agents, labels, used = llm.build(cfg, pops, device, dtype, agents_class=LoRAAgents)
    used.update({"lora_rank": int(cfg.agents.rank), "lora_targets": list(cfg.agents.target_modules),
                 "adapter_memory_bytes": agents.adapter_memory})
    return agents, labels, used


def check_targets(model, targets) -> None:
    """Every target is a Linear of every layer of this model (one-line error otherwise)."""
    layer = model.model.layers[0]
    for t in targets:
        module = getattr(getattr(layer, PARENT[t], None), t, None)
        if not isinstance(module, torch.nn.Linear):
            raise UserError(f"agents.target_modules={t!r} is not allowed: {type(model).__name__} has no Linear "
                            f"{PARENT[t]}.{t}")


class LoRAAgents(LLMAgents):
    def __init__(self, cfg, kb, pops, model, tokenizer, embedder, device):
        super().__init__(cfg, kb, pops, model, tokenizer, embedder, device)
        a = cfg.agents
        check_targets(model, a.target_modules)
        model.requires_grad_(False)  # the base is frozen and shared; only the adapters train
        self.model, self.tokenizer = model, tokenizer
        R = self.B * self.n
        self.lora = StackedLoRA(model.config, R, int(a.rank), float(a.alpha), list(a.target_modules), device,
                                seed=int(cfg.seed))
        self.opt = Adam(self.lora.params, float(a.lr))
        self.generator.use_adapters(self.lora)
        self.row_adapters = True
        self.agent_index = torch.arange(R)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.adapter_memory = adapter_bytes(model.config, R, int(a.rank), list(a.target_modules))
        budget = cfg.generation.get("memory_budget_gb")
        if budget and self.adapter_memory > budget * 2**30:
            raise UserError(f"generation.memory_budget_gb={budget} is not allowed: the {R} adapters with their "
                            f"gradients and Adam moments alone take {self.adapter_memory / 2**20:.2f} MiB")
        self.generator.reserved_bytes = self.adapter_memory
        self.drift: dict[str, list[torch.Tensor]] = {c: [] for c in DRIFT_COLUMNS}  # each step: [B, n]
        self._received = None

    # -- the step --------------------------------------------------------------------------------------
    def _update(self, src, responses, garbled=None, t=0):
        """Keeps what each agent received for training (after trial.noise: with drop, the answer its context
        already holds); writes it into the context only with agents.context."""
        refs, slot = self._received_refs(src, responses, garbled, t)
        self._received = [self.texts[j] for j in refs.flatten().tolist()]  # B*n, row-major [b, i]
        if self.cfg.agents.context:
            self._write_context(refs, slot)

    def step(self, t: int):
        rec = super().step(t)
        received = self._received
        prompts = self.prompts(rec.contexts)
        answers = self.answer_ids(received)
        before = {k: p.clone() for k, p in self.lora.params.items()}
        loss = torch.zeros(self.B * self.n)
        for s in range(int(self.cfg.agents.train_steps)):
            step_loss = train_step(self.model, self.lora, self.opt, prompts, answers, self.agent_index, self.pad_id,
                                   self.train_rows(prompts, answers))
            if s == 0:
                loss = step_loss.cpu()
        drift = self.measure(before, loss)
        for c in DRIFT_COLUMNS:
            self.drift[c].append(drift[c])
        rec.extra["drift"] = drift
        return rec

    def answer_ids(self, texts: list[str]) -> list[list[int]]:
        """The tokens an agent would write after its prompt to give each text: the answer without the
        prefix the prompt already ends with (one tokenizer call for all)."""
        prefix = self.cfg.prompt.answer_prefix or ""
        rest = [x[len(prefix):] if prefix and x.startswith(prefix) else x for x in texts]
        return self.tokenizer(rest, add_special_tokens=False)["input_ids"]

    def train_rows(self, prompts, answers) -> int:
        """Rows per training micro-batch: agents.train_rows, else generation.max_rows lowered until the
        activations fit generation.memory_budget_gb (less the adapters' share)."""
        rows = self.cfg.agents.get("train_rows")
        if rows:
            return int(rows)
        longest = max(len(p) + len(a) for p, a in zip(prompts, answers))
        budget = self.cfg.generation.get("memory_budget_gb")
        if budget:
            budget = max(budget - self.adapter_memory / 2**30, 1e-3)
        cap = min(len(prompts), int(self.cfg.generation.max_rows))  # a forward pass's rows, as in generation
        return training_rows(self.model.config, next(self.model.parameters()).dtype, longest, budget, cap)

    @torch.no_grad()
    def measure(self, before: dict[str, torch.Tensor], loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per agent [B, n] float64: loss, update norm, mean adapter and answer cosine distance to the others."""
        B, n, keys = self.B, self.n, self.lora.keys()
        norm = update_norms(before, self.lora.params, keys).reshape(B, n)
        adapter = mean_off_diagonal(cosine_distances(adapter_gram(self.lora.params, keys, n)))
        e = F.normalize(self.last_embeddings.double(), dim=-1)  # [B, n, d]
        answer = mean_off_diagonal((1 - e @ e.transpose(1, 2)).clamp(0, 2))
        return {"loss": loss.double().reshape(B, n), "update_norm": norm.cpu(), "adapter_distance": adapter.cpu(),
                "answer_distance": answer.cpu()}

    # -- checkpoints and outputs ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["adapters"] = self.lora.state_dict()
        state["adam"] = self.opt.state_dict()
        state["drift"] = {c: torch.stack(v) if v else torch.zeros(0, self.B, self.n, dtype=torch.float64)
                          for c, v in self.drift.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.lora.load_state_dict(state["adapters"])
        self.opt.load_state_dict(state["adam"])
        self.drift = {c: list(state["drift"][c].unbind(0)) for c in DRIFT_COLUMNS}

    def write_outputs(self, run_dir: Path) -> dict:
        """adapters.safetensors (every agent's adapter, stacked; tensorsim.export_adapters turns one into a
        peft adapter) and drift.csv (per step and agent). -> the summary's "lora" entry."""
        from safetensors.torch import save_file

        a = self.cfg.agents
        meta = {"rank": int(a.rank), "alpha": float(a.alpha), "target_modules": list(a.target_modules),
                "populations": self.B, "n": self.n, "base_model": str(self.cfg.model.get("path") or self.cfg.model.source)}
        # one metadata key: safetensors writes several in no fixed order, and a resumed run must write the same bytes
        save_file({k: v.contiguous() for k, v in self.lora.state_dict().items()}, str(run_dir / ADAPTERS),
                  metadata={"tensorsim_stacked_lora": json.dumps(meta, sort_keys=True)})
        drift = {c: torch.stack(v) for c, v in self.drift.items()}  # [T, B, n]
        pops = self.pops
        with open(run_dir / DRIFT, "w", newline="") as f:
            w = csv.writer(f)
            # one column per swept key (k, p, and noise, graph where swept), values as configured (not float32)
            w.writerow(["population", *pops.cell_keys, "replica", "t", "agent", *DRIFT_COLUMNS])
            T = drift["loss"].shape[0]
            for t in range(T):
                for b in range(self.B):
                    cell, r = pops.cells[int(pops.cell[b])], int(pops.replica[b])
                    for i in range(self.n):
                        w.writerow([b, *cell, r, t, i, *(f"{float(drift[c][t, b, i]):.6g}" for c in DRIFT_COLUMNS)])
        means = {c: [round(float(x), 6) for x in drift[c].mean((1, 2))] for c in DRIFT_COLUMNS}  # per step
        return {"lora": {"rank": int(a.rank), "alpha": float(a.alpha), "target_modules": list(a.target_modules),
                         "lr": float(a.lr), "train_steps": int(a.train_steps), "context": bool(a.context),
                         "files": [ADAPTERS, DRIFT], "mean_per_step": means}}
