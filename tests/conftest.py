import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, module="tensorsim", timeout=600, env=None):
    """Run `python -m <module> args...` from the repo root; -> CompletedProcess (text)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def small_llm():
    """The embedded SmolLM2 (model, tokenizer) on the CPU, loaded once per test session."""
    import torch
    from omegaconf import OmegaConf

    from tensorsim.lm.models import load_llm

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2.yaml")
    return load_llm(cfg, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def embedder():
    import torch
    from omegaconf import OmegaConf

    from tensorsim.lm.models import Embedder

    return Embedder(OmegaConf.load(ROOT / "conf" / "embedder" / "minilm.yaml"), torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(llm_dir, embedder_dir): a tiny random LLaMA and BERT saved as local models (tests/tiny_models.py)."""
    from tiny_models import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))
