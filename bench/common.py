"""Shared set-up for the benchmarks: compose the hydra config and build engines without the CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def config(*overrides: str):
    # imported here: gpu_decode.py uses this module on GPU images that lack hydra
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# CPU features that decide which kernels run and whether dtype=auto picks bf16 (/proc/cpuinfo names)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def parse_cpuinfo(text: str) -> dict:
    """/proc/cpuinfo -> {"model": first model name, "flags": set, "cores": physical cores or None}."""
    model, flags, cores, proc = None, set(), set(), {}
    for line in text.splitlines() + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if not key:  # blank line: one logical CPU's block ends
            if "core id" in proc:
                cores.add((proc.get("physical id"), proc["core id"]))
            proc = {}
            continue
        proc[key] = value
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "flags": flags, "cores": len(cores) or None}


def host(dtype: torch.dtype) -> dict:
    """The machine a figure comes from: CPU model, cores, the ISA flags that matter, whether oneDNN has
    native bf16 here (what dtype=auto follows on a CPU), the dtype the benchmark ran in, torch's version."""
    from tensorsim.lm.models import cpu_has_fast_bf16

    try:
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: flags unknown
        info = {"model": None, "flags": None, "cores": None}
    return {
        "cpu_model": info["model"] or platform.processor() or platform.machine(),
        "cpu_cores": info["cores"], "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "isa": {f: (f in info["flags"]) if info["flags"] is not None else None for f in ISA_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_fast_bf16(),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def emit(result: dict, dtype: torch.dtype) -> None:
    """The last line of every benchmark: one JSON object, with the machine and dtype it ran on."""
    print(json.dumps(dict(result, host=host(dtype))))


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
    from tensorsim.agents.llm import LLMAgents
    from tensorsim.core.memory import keep_freed_memory
    from tensorsim.core.populations import build_populations
    from tensorsim.knowledge import load_kb
    from tensorsim.lm.models import Embedder, load_llm, resolve_device, resolve_dtype

    keep_freed_memory()  # as simulate() does: the engine and the sequential reference both get it
    device = resolve_device(cfg.device)
    if model is None:
        model, tokenizer = load_llm(cfg.model, device, resolve_dtype(cfg.dtype, device))
        embedder = Embedder(cfg.embedder, device)
    kb = load_kb(cfg.kb).take(cfg.trial.n)
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed).to(device)
    return LLMAgents(cfg, kb, pops, model, tokenizer, embedder, device), model, tokenizer, embedder


def measure_steps(engine, steps: int) -> dict:
    """One warm-up step, then `steps` timed steps -> seconds, new tokens, agent-steps/s, tokens/s, and
    the useful arithmetic done (GFLOP, GFLOP/s: see useful_gflop)."""
    engine.step(0)
    stats = engine.generator.stats
    before = dataclasses.replace(stats)
    with Timer() as tm:
        for t in range(1, steps + 1):
            engine.step(t)
    tokens = stats.new_tokens - before.new_tokens
    agent_steps = engine.B * engine.n * steps
    gflop = useful_gflop(engine.generator.model, stats.prefill_tokens - before.prefill_tokens,
                         stats.forward_rows - before.forward_rows, stats.decode_rows - before.decode_rows)
    return {"seconds": round(tm.seconds, 3), "new_tokens": tokens,
            "agent_steps_per_s": round(agent_steps / tm.seconds, 3),
            "new_tokens_per_s": round(tokens / tm.seconds, 2),
            "prefill_tokens": stats.prefill_tokens - before.prefill_tokens,
            "decode_rows": stats.decode_rows - before.decode_rows,
            "GFLOP": round(gflop, 1), "GFLOP_per_s": round(gflop / tm.seconds, 1)}


# -- roofline: what the hardware allows, measured on the spot ----------------------------------------
def linear_weights(model) -> tuple[int, int]:
    """(weights of the decoder layers' linear maps, weights of the output head). Every token a forward
    pass runs multiplies the first; only rows whose logits are taken multiply the second. Together they
    are nearly all the FLOPs at these prompt lengths (attention scores and the norms are left out)."""
    body = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    return body, model.lm_head.weight.numel()


def useful_gflop(model, prefill_tokens: int, prefill_rows: int, decode_rows: int) -> float:
    """Multiply-adds x 2 the work needs: every prefilled token and every decoded row through the layers,
    the head for each prefilled row's last token and each decoded row. Rows that ride along finished,
    or padding, are not useful work and are not counted."""
    body, head = linear_weights(model)
    return 2 * (body * (prefill_tokens + decode_rows) + head * (prefill_rows + decode_rows)) / 1e9


def _median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        with Timer() as tm:
            fn()
        times.append(tm.seconds)
    return sorted(times)[len(times) // 2]


def machine_peaks(device: torch.device, dtype: torch.dtype) -> dict:
    """The two rates a forward pass is bound by, measured here rather than looked up: a large square
    matmul (arithmetic; on CPU the faster of MKL and oneDNN on packed weights, the engine's two
    kernels) and the sum of a 512 MiB tensor (memory read bandwidth)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: a @ b, 5)
    if device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
        seconds = min(seconds, _median_seconds(
            lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), 5))
    flops = 2 * n ** 3 / seconds
    del a, b
    x = torch.ones(2 ** 27, device=device, dtype=torch.float32)  # 512 MiB
    read = x.numel() * 4 / _median_seconds(lambda: x.sum(), 5)
    return {"matmul_GFLOP_per_s": round(flops / 1e9, 1), "read_GB_per_s": round(read / 1e9, 1),
            "dtype": str(dtype).replace("torch.", "")}
