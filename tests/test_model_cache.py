"""The dequantised-model cache is keyed by the GGUF file's content, not by the model's name alone."""
import os

import pytest
from omegaconf import OmegaConf

from tensorsim.errors import UserError
from tensorsim.lm.models import cache_key, cache_root, embedded_llm_dir


def _gguf(path, data: bytes):
    path.write_bytes(data)
    return path


def test_cache_key_follows_file_name_size_and_content(tmp_path):
    a = _gguf(tmp_path / "m.Q4_1.gguf", b"GGUF" + bytes(2 << 20))
    key = cache_key("M", a)
    assert key == cache_key("M", a) and key.startswith("M-m.Q4_1-")
    b = _gguf(tmp_path / "m.Q8_0.gguf", a.read_bytes())
    assert cache_key("M", b) != key  # another gguf_file
    _gguf(a, b"GGUF" + bytes(2 << 20) + b"x")
    assert cache_key("M", a) != key  # another size
    same_size = bytearray(a.read_bytes())
    same_size[100] = 1
    _gguf(a, bytes(same_size))
    assert len(same_size) == (2 << 20) + 5 and cache_key("M", a) != key  # same size, another header


def test_changed_gguf_file_does_not_reuse_the_old_cache(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fake_llm_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _gguf(pkg / "a.gguf", b"GGUF-a" + bytes(100))
    _gguf(pkg / "b.gguf", b"GGUF-b" + bytes(100))
    cache = tmp_path / "cache"
    cfg = OmegaConf.create({"name": "Fake", "package": "fake_llm_pkg", "gguf_file": "a.gguf", "cache_dir": str(cache)})
    ready = cache / cache_key("Fake", pkg / "a.gguf")
    ready.mkdir(parents=True)
    (ready / "model.safetensors").write_bytes(b"")
    assert embedded_llm_dir(cfg) == ready  # a cached copy of this very file is used
    cfg.gguf_file = "b.gguf"
    import tensorsim.lm.models as models

    def no_dequantise(*a, **k):
        raise RuntimeError("would dequantise")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_dequantise)
    with pytest.raises(RuntimeError, match="would dequantise"):  # b.gguf is not served a.gguf's weights
        models.embedded_llm_dir(cfg)
    cfg.gguf_file = "missing.gguf"
    with pytest.raises(UserError, match="does not exist"):
        embedded_llm_dir(cfg)


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORSIM_CACHE", str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"  # model.cache_dir first
    assert cache_root(None) == tmp_path / "env"  # then $TENSORSIM_CACHE
    monkeypatch.delenv("TENSORSIM_CACHE")
    assert cache_root(None) == cache_root("~/.cache/tensorsim") .__class__(os.path.expanduser("~/.cache/tensorsim"))
