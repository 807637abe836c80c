"""Shared set-up for the benchmarks: compose the hydra config and build engines without the CLI."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def emit(result: dict) -> None:
    """The last line of every benchmark: one JSON object."""
    print(json.dumps(result))


class Timer:
    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0


def build_llm_engine(cfg, model=None, tokenizer=None, embedder=None):
    """An LLMAgents engine for cfg (reusing loaded models when given) -> (engine, model, tok, embedder)."""
    from tensorsim.knowledge import load_kb
    from tensorsim.llm_agents import LLMAgents
    from tensorsim.memory import keep_freed_memory
    from tensorsim.models import Embedder, load_llm, resolve_device, resolve_dtype
    from tensorsim.populations import build_populations

    keep_freed_memory()  # as simulate() does: the engine and the sequential reference both get it
    device = resolve_device(cfg.device)
    if model is None:
        model, tokenizer = load_llm(cfg.model, device, resolve_dtype(cfg.dtype, device))
        embedder = Embedder(cfg.embedder, device)
    kb = load_kb(cfg.kb).take(cfg.trial.n)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed).to(device)
    return LLMAgents(cfg, kb, pops, model, tokenizer, embedder, device), model, tokenizer, embedder


def measure_steps(engine, steps: int) -> dict:
    """One warm-up step, then `steps` timed steps -> seconds, new tokens, agent-steps/s, tokens/s."""
    engine.step(0)
    tokens0 = engine.generator.stats.new_tokens
    with Timer() as tm:
        for t in range(1, steps + 1):
            engine.step(t)
    tokens = engine.generator.stats.new_tokens - tokens0
    agent_steps = engine.B * engine.n * steps
    return {"seconds": round(tm.seconds, 3), "new_tokens": tokens,
            "agent_steps_per_s": round(agent_steps / tm.seconds, 3),
            "new_tokens_per_s": round(tokens / tm.seconds, 2)}
