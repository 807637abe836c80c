"""What the install decides: one faiss per extra, and a missing faiss is refused up front."""
import importlib.util
import subprocess

import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from tensorsim.config import validate_backend
from tensorsim.errors import UserError


def test_extras_hold_one_faiss_each():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("faiss")]
    extras = project["optional-dependencies"]
    assert [d for d in extras["cpu"] if "faiss" in d] == ["faiss-cpu"]
    assert [d for d in extras["gpu"] if "faiss" in d] == ["faiss-gpu-cu12"]
    assert not [d for d in extras["test"] if "faiss" in d]


def test_faiss_backend_without_faiss_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    cfg = OmegaConf.create({"agents": {"kind": "llm"}, "graph": {"backend": "faiss"}, "device": "cpu",
                            "trial": {"k": 5}})
    with pytest.raises(UserError, match=r"tensorsim\[cpu\]"):
        validate_backend(cfg, 5)
    cfg.graph.backend = "torch"
    validate_backend(cfg, 5)


@pytest.mark.parametrize("variant,torch,extra", [("cpu", '"torch==2.13.0+cpu"', ".[cpu,test]"),
                                                 ("cuda", '"torch==2.13.0"', ".[gpu,test]")])
def test_make_setup_picks_torch_build_and_extra(tmp_path, variant, torch, extra):
    r = subprocess.run(["make", "-n", "setup", f"TORCH_VARIANT={variant}", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.endswith(torch) for line in lines), r.stdout
    assert any(line.endswith(f'-e "{extra}"') for line in lines), r.stdout
    assert any("torch.cuda.is_available()" in line for line in lines)


def test_make_clean_keeps_results():
    r = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "outputs" not in r.stdout and "multirun" not in r.stdout
    r = subprocess.run(["make", "-n", "setup", "TORCH_VARIANT=rocm"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "cpu, cuda or auto" in r.stderr
