"""On a real GPU (skipped without one): the engine's CUDA-only paths, which the CPU suite can only
simulate. bench/gpu_check.sh runs these; they use the tiny saved models, not the embedded ones."""
import json

import pytest
import tiny_models
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from tensorsim import checkpoint
from tensorsim.agents.llm import LLMAgents
from tensorsim.lm.llama import FastLlama, GraphedDecode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(dirs, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["trial=smoke", *tiny_models.overrides(dirs), *overrides])


@pytest.mark.parametrize("capacity", [None, 64])
def test_graphed_slots_over_admissions_compaction_and_growth(capacity):
    """tests/test_llama.py's continuous-batching scenario with real CUDA graphs: refills, a compaction,
    and the cache (capacity None) or its span (fixed capacity) growing past 32 positions; every step's
    logits match the transformers forward on the GPU, and each (cache, span) is captured once."""
    from test_llama import _tiny, refill_scenario

    model = _tiny().cuda()
    fast = FastLlama(model)
    graphed = GraphedDecode(fast)
    batch = refill_scenario(model, fast, graphed, capacity, atol=1e-3)
    assert fast.graph_error is None, fast.graph_error
    assert graphed.captures == 3 and batch.cache.k.is_cuda


def _run_steps(cfg, steps=2):
    from tensorsim.core.populations import build_populations
    from tensorsim.knowledge import load_kb
    from tensorsim.lm.models import Embedder, load_llm, resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    model, tok = load_llm(cfg.model, device, resolve_dtype(cfg.dtype, device))
    kb = load_kb().take(cfg.trial.n)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed).to(device)
    agents = LLMAgents(cfg, kb, pops, model, tok, Embedder(cfg.embedder, device), device)
    return agents, [agents.step(t) for t in range(steps)]


@pytest.mark.parametrize("labeler", ["name", "centroid"])
def test_llm_agents_steps_on_cuda(tiny_models, labeler, monkeypatch):
    """Whole steps with device=cuda (dtype=auto: bf16 on this GPU) and CUDA-graph decoding."""
    replays = []
    real = GraphedDecode.__call__
    monkeypatch.setattr(GraphedDecode, "__call__", lambda self, *a: replays.append(1) or real(self, *a))
    cfg = _cfg(tiny_models, "device=cuda", f"labeler={labeler}", "trial.replicas=2")
    agents, records = _run_steps(cfg)
    assert agents.generator.device.type == "cuda" and agents.generator.fast is not None
    assert agents.generator.fast.graph_error is None and replays
    for rec in records:
        assert rec.labels.shape == rec.partner.shape == (2, cfg.trial.n) and rec.labels.device.type == "cpu"
        assert all(rec.responses) and rec.new_tokens > 0
    assert {t.device.type for t in (agents.entry_ref, agents.scores, agents.slots)} == {"cpu"}


class Preempted(Exception):
    pass


def test_a_cuda_run_resumes_on_the_cpu(tiny_models, tmp_path, monkeypatch):
    from tensorsim import run

    real = LLMAgents.step

    def stopped_at_2(self, t):
        if t == 2:
            raise Preempted
        return real(self, t)

    monkeypatch.setattr(LLMAgents, "step", stopped_at_2)
    cfg = _cfg(tiny_models, "device=cuda", "trial.steps=3", "trial.window=2", "checkpoint.every=1",
               "output.plots=false")
    with pytest.raises(Preempted):
        run.simulate(cfg, tmp_path)
    monkeypatch.setattr(LLMAgents, "step", real)
    ckpt = checkpoint.loads((tmp_path / checkpoint.CHECKPOINT).read_bytes())  # no CUDA tensor inside
    flat = [v for v in ckpt["agents"].values() if isinstance(v, torch.Tensor)]
    assert ckpt["t"] == 2 and flat and all(t.device.type == "cpu" for t in flat)
    summary = run.simulate(_cfg(tiny_models, "resume=true", "device=cpu"), tmp_path)
    assert summary["complete"] and summary["device"] == "cpu" and summary["config"]["device"] == "cuda"
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3
