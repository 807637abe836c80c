"""A population's trajectory does not depend on which other populations share its batch."""
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from tensorsim.agents.llm import LLMAgents
from tensorsim.core.populations import build_populations
from tensorsim.knowledge import load_kb


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["trial=smoke", *overrides])


def _run(cfg, models, steps=2):
    model, tok, emb = models
    kb = load_kb().take(cfg.trial.n)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed)
    agents = LLMAgents(cfg, kb, pops, model, tok, emb, torch.device("cpu"))
    return pops, [agents.step(t) for t in range(steps)]


def test_cell_alone_equals_cell_packed(small_llm, embedder):
    models = (*small_llm, embedder)
    # greedy decoding: the same answers whatever the batch; coins and partners are counter-based
    alone_pops, alone = _run(_cfg("trial.k=2", "trial.p=0.5", "generation.temperature=0"), models)
    packed_pops, packed = _run(_cfg("trial.k=[1,2]", "trial.p=[0.2,0.5]", "generation.temperature=0"), models)
    b = [c for c, kp in enumerate(packed_pops.cells) if kp == (2, 0.5)][0]  # replicas=1: cell index = row
    n = 6
    for a, p in zip(alone, packed):
        assert torch.equal(a.labels[0], p.labels[b])
        assert torch.equal(a.mirrored[0], p.mirrored[b])
        assert torch.equal(a.partner[0], p.partner[b])
        assert a.responses == p.responses[b * n:(b + 1) * n]
    # per-population k and p: k=1 cells copy their nearest, p=0.2 cells mirror less often than p=0.5
    assert packed_pops.k.tolist() == [1, 1, 2, 2]
    assert torch.allclose(packed_pops.p, torch.tensor([0.2, 0.5, 0.2, 0.5]))
