"""Agent kinds: one module each, loaded only when a run uses it (GMM runs never import transformers).

A kind's module defines
    WRITES_TEXT: bool            its steps return contexts and answers (output.transcript applies)
    uses_graph(cfg) -> bool      its step builds the k-NN graph of tensorsim/core/graph.py (graph.backend applies)
    validate(cfg)                its own config checks, one-line UserErrors, before anything loads
    build(cfg, pops, device, dtype) -> (agents, label names, {what the run used, for summary.json})
and a class whose step(t) returns a core.step.StepRecord, with state_dict() / load_state_dict(d) for
checkpoints: nested dicts (str or int keys), lists and tuples of tensors, str, int, float, bool, None and
bytes only (tensorsim/checkpoint.py), whose tensors keep the shapes and dtypes the freshly built agents
have (resume compares them; entries created during a run may be added).
Adding a kind: that module, conf/agents/<kind>.yaml, and one line in KINDS.
"""
from __future__ import annotations

import importlib
from types import ModuleType

KINDS = {
    "llm": "tensorsim.agents.llm",  # the shared LLM, each agent with its own knowledge base (SPEC §1)
    "gmm": "tensorsim.agents.gmm",  # Gaussian-mixture proxy (SPEC §2)
    "lora": "tensorsim.agents.lora",  # LLM agents with one LoRA adapter each, trained on what they read (issue 15)
}


def kind_module(kind: str) -> ModuleType:
    """The module of agent kind `kind` (already validated against KINDS)."""
    return importlib.import_module(KINDS[kind])
