"""Device handling without a GPU: the engine runs on a simulated second device (tests/simdevice.py), where
mixing its tensors with CPU tensors fails as on CUDA and every device-to-host wait is counted."""
import pytest
import tiny_models
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from simdevice import SIM, devices_of, sim_device

from tensorsim import checkpoint
from tensorsim.agents.llm import LLMAgents
from tensorsim.core.labels import CentroidLabeler
from tensorsim.core.populations import build_populations
from tensorsim.knowledge import load_kb
from tensorsim.lm.generate import Generator, SamplingConfig, common_prefix_len
from tensorsim.lm.llama import KVCache
from tensorsim.lm.models import Embedder, load_llm
from tensorsim.lm.slots import SlotCache, chunks


def _cfg(dirs, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["trial=smoke", *tiny_models.overrides(dirs), *overrides])


def _agents(cfg, device):
    model, tok = load_llm(cfg.model, device, torch.float32)
    kb = load_kb().take(cfg.trial.n)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed).to(device)
    return LLMAgents(cfg, kb, pops, model, tok, Embedder(cfg.embedder, device), device)


@pytest.mark.parametrize("labeler", ["name", "centroid"])
def test_a_step_on_another_device_keeps_its_bookkeeping_on_the_cpu(tiny_models, labeler):
    """Models, embeddings and populations on the device: two steps run (no op mixes devices), the
    bookkeeping (entry_ref, scores, slots) and what a step returns and checkpoints stay on the CPU."""
    cfg = _cfg(tiny_models, f"labeler={labeler}", "trial.replicas=2", "retrieval.key=entry",
               "retrieval.every_step=true")  # every_step + entry: the re-scoring path runs too
    with sim_device():
        agents = _agents(cfg, SIM)
        assert agents.generator.device == SIM and agents.embedder.device == SIM
        if labeler == "centroid":
            assert agents.labeler.centroids.device == SIM  # built from the embedder's output
        for t in range(2):
            rec = agents.step(t)
            assert devices_of([rec.labels, rec.partner, rec.mirrored]) == {"cpu"}
            assert rec.labels.shape == rec.partner.shape == (2, cfg.trial.n)
            assert len(rec.responses) == 2 * cfg.trial.n and all(rec.responses)
        assert devices_of([agents.entry_ref, agents.scores, agents.slots]) == {"cpu"}
        assert devices_of(agents.state_dict()) == {"cpu"}


def test_centroid_labels_are_computed_on_the_embeddings_device():
    g = torch.Generator().manual_seed(0)
    ref, emb = torch.randn(12, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    ref_labels = torch.arange(12) % 4
    expected = CentroidLabeler(ref, ref_labels, 4)(emb)
    with sim_device():
        labeler = CentroidLabeler(ref.to(SIM), ref_labels, 4)  # labels on the CPU, reference on the device
        got = labeler(emb.to(SIM))
        assert got.device == SIM and torch.equal(got.cpu(), expected)


def _prompts(n):
    tok = tiny_models.tokenizer()
    kb = load_kb()
    return [tok(f"<|user|>{kb.answers[i][0]}\n<|assistant|>The prettiest flower is")["input_ids"] for i in range(n)]


def test_a_decode_pass_reads_the_device_once(tiny_models, monkeypatch):
    """Continuous batching on the device: per decode pass one device-to-host transfer (the drawn
    tokens with the rows' finiteness); the rest of the loop decides on host mirrors. Prefills (the
    shared prefix, admissions) and compactions may wait; they are rare."""
    cfg = _cfg(tiny_models)
    prompts = _prompts(10)
    keys = torch.arange(10) * 7919
    with sim_device() as mode:
        model, tok = load_llm(cfg.model, SIM, torch.float32)
        gen = Generator(model, tok, SamplingConfig(temperature=0.75, max_new_tokens=20, max_rows=4,
                                                   stop_at_sentence_end=False))
        waits = {"admit": 0, "compact": 0, "prefix": 0, "draw": 0, "draws": 0}

        def counted(name, fn):
            def run(*a, **k):
                before = len(mode.syncs)
                out = fn(*a, **k)
                waits[name] += len(mode.syncs) - before
                if name == "draw":
                    waits["draws"] += 1
                return out
            return run

        monkeypatch.setattr(SlotCache, "admit", counted("admit", SlotCache.admit))
        monkeypatch.setattr(SlotCache, "compact", counted("compact", SlotCache.compact))
        monkeypatch.setattr(gen, "_draw", counted("draw", gen._draw))
        monkeypatch.setattr(gen.fast, "prefix_cache", counted("prefix", gen.fast.prefix_cache))
        before = len(mode.syncs)
        answers = gen(prompts, keys)
        total = len(mode.syncs) - before
    assert len(answers) == 10 and waits["draws"] >= 20
    assert waits["draw"] == waits["draws"]  # one transfer per pass
    # outside prefills, compactions and draws: only the row keys' copy to the device, once per call
    assert total - waits["admit"] - waits["compact"] - waits["prefix"] - waits["draw"] == 1, mode.syncs[before:]


def test_the_device_cache_is_allocated_once_at_its_budgeted_capacity(tiny_models, monkeypatch):
    """On an accelerator the slot cache holds prompt + max_new_tokens from the start, so it never grows
    (growing holds two copies at once, which memory_budget_gb does not count)."""
    cfg = _cfg(tiny_models)
    prompts = _prompts(5)
    grown, real = [], KVCache.reshaped

    def reshaped(self, rows, capacity):
        if capacity != self.k.shape[3]:
            grown.append(capacity)
        return real(self, rows, capacity)

    monkeypatch.setattr(KVCache, "reshaped", reshaped)
    caches, real_room = [], SlotCache._room
    monkeypatch.setattr(SlotCache, "_room", lambda self, n: real_room(self, n) or caches.append(self.cache))
    with sim_device():
        model, tok = load_llm(cfg.model, SIM, torch.float32)
        gen = Generator(model, tok, SamplingConfig(temperature=0.0, max_new_tokens=40, stop_at_sentence_end=False))
        answers = gen(prompts, torch.arange(5) * 31)
    assert max(len(a) for a in answers) > KVCache.GROW  # past the first chunk: the CPU path would grow here
    assert not grown
    own = max(len(p) for p in prompts) - common_prefix_len(prompts)  # the shared prefix is held once
    assert {c.k.shape[3] for c in caches} == {chunks(own + 40)}


class Preempted(Exception):
    pass


def test_a_device_run_resumes_on_the_cpu(tiny_models, tmp_path, monkeypatch):
    """A run on the device is stopped after a checkpoint; resume=true device=cpu finishes it on the CPU:
    the checkpoint holds CPU tensors only (it loads without the device)."""
    from tensorsim import run

    real = LLMAgents.step

    def stopped_at_2(self, t):
        if t == 2:
            raise Preempted
        return real(self, t)

    cfg = _cfg(tiny_models, f"device={SIM}", "trial.steps=3", "trial.window=2", "checkpoint.every=1",
               "output.plots=false")
    monkeypatch.setattr(LLMAgents, "step", stopped_at_2)
    with sim_device(), pytest.raises(Preempted):
        run.simulate(cfg, tmp_path)
    monkeypatch.setattr(LLMAgents, "step", real)
    ckpt = checkpoint.loads((tmp_path / checkpoint.CHECKPOINT).read_bytes())  # as saved: CPU tensors only
    assert ckpt["t"] == 2 and devices_of(ckpt) == {"cpu"}
    summary = run.simulate(_cfg(tiny_models, "resume=true", "device=cpu"), tmp_path)
    assert summary["complete"] and summary["device"] == "cpu" and summary["config"]["device"] == str(SIM)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 3  # header + steps 0..2


def compose_like(**values):
    from omegaconf import OmegaConf

    return OmegaConf.create(values)


def test_resuming_a_cuda_run_without_cuda_names_the_override(tmp_path):
    from tensorsim.errors import UserError
    from tensorsim.run import resumed_config

    stored = {"device": "cuda:1", "seed": 3}
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="resume it with device=cpu"):
            resumed_config(stored, compose_like(device="auto"))
    cfg = resumed_config(stored, compose_like(device="cpu"))
    assert cfg.device == "cpu" and cfg.seed == 3


def test_a_numbered_cuda_device_becomes_the_current_one(monkeypatch):
    """device=cuda:1: graphs, their streams and Triton kernels launch on the current device, so
    resolve_device makes it cuda:1; a device the machine lacks is refused."""
    from tensorsim.errors import UserError
    from tensorsim.lm.models import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and current == [torch.device("cuda", 1)]
    with pytest.raises(UserError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    assert resolve_device("cuda") == torch.device("cuda") and len(current) == 1  # unnumbered: the current one


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_uses_bf16_only_where_the_gpu_computes_it(monkeypatch, native, expected):
    from tensorsim.lm.models import resolve_dtype

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or native)
    assert resolve_dtype("auto", torch.device("cuda")) == expected
    assert asked == [False]  # emulated bf16 (e.g. a T4) is slower than float16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32
