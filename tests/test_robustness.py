"""Runs that survive: resume after kill -9, out-of-memory retries, non-finite values."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cli

from tensorsim.core import rng
from tensorsim.knowledge import load_kb
from tensorsim.lm.generate import Generator, NonFiniteError, SamplingConfig
from tensorsim.lm.prompts import PAPER_TEMPLATE, PromptBuilder

OUTPUTS = ["metrics.csv", "agents.csv", "transcript.jsonl", "stability.png", "entropy.png", "silos.png"]
RUN = ["trial=smoke", "trial.steps=5", "trial.window=3", "checkpoint.every=2"]


def test_kill_9_then_resume_gives_identical_outputs(tiny_models, tmp_path):
    """The resume path does not depend on the model: the tiny ones (30 s less than SmolLM2)."""
    from tiny_models import overrides

    run = [*RUN, *overrides(tiny_models)]
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    r = run_cli(*run, f"hydra.run.dir={whole}")
    assert r.returncode == 0, r.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "tensorsim", *run, f"hydra.run.dir={crashed}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (crashed / "checkpoint.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run ended before it could be killed"
    started = {f.name: f.read_bytes() for f in (crashed / ".hydra").glob("*.yaml")}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (crashed / "summary.json").exists()  # an incomplete run is recognisable
    assert (crashed / "metrics.csv.partial").exists() and not (crashed / "metrics.csv").exists()
    r = run_cli("resume=true", f"hydra.run.dir={crashed}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout
    for f in OUTPUTS:
        assert (crashed / f).read_bytes() == (whole / f).read_bytes(), f
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, crashed))
    for key in ("config", "replicas", "new_tokens", "generations"):
        assert a[key] == b[key], key
    assert not (crashed / "checkpoint.safetensors").exists()
    # .hydra/ keeps the files of the command that started the run; the resume command's go to .hydra/resume/
    assert sorted(started) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    for name, data in started.items():
        assert (crashed / ".hydra" / name).read_bytes() == data, name
    for name in ("config.yaml", "overrides.yaml"):  # hydra.yaml differs only by the run directory
        assert (crashed / ".hydra" / name).read_bytes() == (whole / ".hydra" / name).read_bytes(), name
    assert "resume=true" in (crashed / ".hydra" / "resume" / "overrides.yaml").read_text()
    assert "resume=true" not in (crashed / ".hydra" / "overrides.yaml").read_text()


def test_resume_without_checkpoint_is_refused(tmp_path):
    r = run_cli("resume=true", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and "has no checkpoint.safetensors" in r.stderr and "Traceback" not in r.stderr


def _prompts(tok, count):
    kb = load_kb()
    return PromptBuilder(tok, PAPER_TEMPLATE, "The prettiest flower is")([kb.answers[i][0] for i in range(count)])


def test_out_of_memory_halves_the_micro_batch_and_keeps_answers(small_llm, monkeypatch):
    """The transformers engine (fixed micro-batches)."""
    model, tok = small_llm
    prompts = _prompts(tok, 6)
    keys = rng.mix(2, torch.arange(6))
    cfg = SamplingConfig(temperature=0.75, max_new_tokens=12, max_rows=8, engine="hf")
    expected = Generator(model, tok, cfg)(prompts, keys)
    gen = Generator(model, tok, cfg)
    real = gen._generate_chunk

    def fails_above_two_rows(p, k, offset=0):
        if len(p) > 2:
            raise torch.OutOfMemoryError("injected")
        return real(p, k, offset)

    monkeypatch.setattr(gen, "_generate_chunk", fails_above_two_rows)
    assert gen(prompts, keys) == expected
    assert gen.max_rows == 2 and gen.stats.oom_retries == 2  # 8 -> 4 -> 2 rows per pass


def test_out_of_memory_in_continuous_batching_keeps_finished_answers(small_llm, monkeypatch):
    """The fast engine: an out-of-memory error while refilling a slot halves the slots; answers that had
    ended are kept, the rest start over, and every answer is the one an undisturbed run gives."""
    from tensorsim.lm.slots import SlotCache

    model, tok = small_llm
    prompts = _prompts(tok, 6)
    keys = rng.mix(2, torch.arange(6))
    cfg = SamplingConfig(temperature=0.75, max_new_tokens=12, max_rows=4)
    expected = Generator(model, tok, cfg)(prompts, keys)
    gen = Generator(model, tok, cfg)
    real, calls = SlotCache.admit, []

    def fails_on_first_refill(self, seqs, inverse):
        calls.append(len(inverse))
        if len(calls) == 2:  # the first refill: at least one answer has ended
            raise torch.OutOfMemoryError("injected")
        return real(self, seqs, inverse)

    monkeypatch.setattr(SlotCache, "admit", fails_on_first_refill)
    assert gen(prompts, keys) == expected
    assert gen.max_rows == 2 and gen.stats.oom_retries == 1
    assert calls[0] == 4 and max(calls[2:]) <= 2
    assert sum(calls[2:]) < 6  # rows whose answer had ended were not generated again
    # the slots actually used are halved, not max_rows: 6 rows in 6 slots (of 256 allowed) -> 3
    failed, calls = [], []

    def fails_once(self, seqs, inverse):
        if not failed:
            failed.append(len(inverse))
            raise torch.OutOfMemoryError("injected")
        calls.append(len(inverse))
        return real(self, seqs, inverse)

    wide = Generator(model, tok, SamplingConfig(temperature=0.75, max_new_tokens=12, max_rows=256))
    monkeypatch.setattr(SlotCache, "admit", fails_once)
    assert wide(prompts, keys) == expected
    assert failed == [6] and wide.max_rows == 3 and wide.stats.oom_retries == 1 and max(calls) == 3


def test_memory_budget_sets_rows_per_pass(small_llm):
    model, tok = small_llm
    gen = Generator(model, tok, SamplingConfig(max_new_tokens=100, max_rows=256, memory_budget_gb=0.05))
    per_row = gen.kv_per_token * (100 + 100)
    assert gen.rows_for_budget(100) == int(0.05 * 2**30 // per_row) < 256
    assert Generator(model, tok, SamplingConfig(max_rows=256)).rows_for_budget(100) == 256
    # the fast engine holds a 60-token shared prefix once: every row only needs its own 40 + 100
    budget = 0.05 * 2**30 - gen.kv_per_token * 60
    assert gen.rows_for_budget(100, shared=60) == int(budget // (gen.kv_per_token * 140)) > gen.rows_for_budget(100)
    prompts = [[1] * 60 + [t, 2] for t in range(5)]
    assert gen._shared_prefix(prompts) == 60
    hf = Generator(model, tok, SamplingConfig(max_new_tokens=100, memory_budget_gb=0.01, engine="hf"))
    assert hf._shared_prefix(prompts) == 0


def test_non_finite_logits_name_the_rows(small_llm, monkeypatch):
    model, tok = small_llm
    gen = Generator(model, tok, SamplingConfig(max_new_tokens=4))
    real = gen._decode

    def poisoned(*a, **k):
        logits = real(*a, **k)
        logits[1] = float("nan")
        return logits

    monkeypatch.setattr(gen, "_decode", poisoned)
    with pytest.raises(NonFiniteError) as e:
        gen(_prompts(tok, 3), rng.mix(0, torch.arange(3)))
    assert e.value.rows == [1]


def test_non_finite_stops_the_run_keeping_the_checkpoint(tmp_path):
    """Through the CLI: NaN embeddings at step 2 stop the run with exit 3, naming step and population."""
    code = (
        "import sys, torch\n"
        "import tensorsim.agents.llm as la\n"
        "orig = la.LLMAgents.step\n"
        "def step(self, t):\n"
        "    if t == 2:\n"
        "        real = self.embedder.responses\n"
        "        self.embedder.responses = lambda texts: real(texts) * float('nan')\n"
        "    return orig(self, t)\n"
        "la.LLMAgents.step = step\n"
        "import runpy\n"
        "sys.argv = ['tensorsim'] + sys.argv[1:]\n"
        "runpy.run_module('tensorsim', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code, *RUN, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stderr[-2000:]
    line = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and "step 2" in line[0] and "population(s) [0]" in line[0]
    assert (tmp_path / "checkpoint.safetensors").exists() and not (tmp_path / "summary.json").exists()
