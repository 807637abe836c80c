"""Decode throughput of a random-weight LLaMA-2-7B-shaped model (no weights needed), for both engines
(fast: tensorsim.lm.llama with its static KV cache and CUDA-graph replay; hf: the transformers forward):
tokens/s and achieved memory bandwidth next to the device's bound, and the projected time of the
authors' full grid (1,360 runs x 80 steps x 30 agents = 3.26M generations).

    python bench/gpu_decode.py --batch 30 240          # on a GPU, bf16 (float16 before Ampere)
    python bench/gpu_decode.py --tiny --device cpu     # the same code path on a tiny model
Last line: one JSON object, also when a measurement fails or --budget-s runs out (those rows say so).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, device_name, emit  # noqa: E402

from tensorsim.lm.generate import decode_one_token, prefill  # noqa: E402

# peak HBM bandwidth (bytes/s) by device name
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
GRID_GENERATIONS = 1360 * 80 * 30


def build_model(tiny: bool, device, dtype):
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, vocab_size=32000)
    else:  # LLaMA-2-7B's shape
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    with init_empty_weights():
        model = LlamaForCausalLM(cfg)  # meta tensors: no host memory for 7B weights
    model = model.to_empty(device=device).to(dtype)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    # to_empty left the rotary tables (buffers computed in __init__) uninitialised: NaN logits.
    # Rebuilt after the dtype cast, so inv_freq stays float32 as from_pretrained keeps it.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg).to(device)
    return model.eval(), cfg


def bench_batch(model, cfg, batch: int, prompt_len: int, new_tokens: int, device, engine: str, fast=None) -> dict:
    """Prefill `batch` random prompts, then time `new_tokens` greedy decode steps with one engine:
    fast (tensorsim.lm.llama, static KV cache; CUDA-graph replay on a GPU) or hf (transformers forward)."""
    from transformers import DynamicCache

    from tensorsim.lm.llama import GraphedDecode

    ids = torch.randint(3, cfg.vocab_size, (batch, prompt_len), device=device)
    kv_tokens = prompt_len + new_tokens / 2  # cache positions a step reads, on average
    with torch.inference_mode():
        if engine == "fast":
            seqs = ids.tolist()
            with Timer() as tp:
                logits, cache = fast.prefill(seqs, None, extra=new_tokens + 1)
            decode = fast.decode
            if device.type == "cuda":  # one graph over the whole capacity, captured before the timer
                decode = GraphedDecode(fast)
                decode.prepare(cache, cache.k.shape[3])
                kv_tokens = cache.k.shape[3]  # the graph attends its whole span
            token = logits.argmax(-1)
            with Timer() as td:
                for _ in range(new_tokens):
                    logits = decode(token, cache)
                    token = logits.argmax(-1)
        else:
            mask = torch.ones_like(ids)
            cache = DynamicCache()
            with Timer() as tp:
                logits = prefill(model, ids, mask, cache)
            token = logits.argmax(-1, keepdim=True)
            with Timer() as td:
                for _ in range(new_tokens):
                    mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], 1)
                    logits = decode_one_token(model, token, mask, mask.sum(-1, keepdim=True) - 1, cache)
                    token = logits.argmax(-1, keepdim=True)
        finite = bool(torch.isfinite(logits).all())  # random weights, but never NaN (RoPE tables built)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes_avg = 2 * cfg.num_hidden_layers * cfg.hidden_size * batch * kv_tokens * model.dtype.itemsize
    step_s = td.seconds / new_tokens
    return {"engine": engine, "batch": batch, "prefill_s": round(tp.seconds, 4),
            "decode_step_ms": round(step_s * 1e3, 3), "decode_tokens_per_s": round(batch / step_s, 1),
            "achieved_GBps": round((weight_bytes + kv_bytes_avg) / step_s / 1e9, 1), "finite_logits": finite}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="*", default=[30, 240])
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=48, help="decode steps timed (answers average ~40 tokens)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a tiny LLaMA instead of the 7B shape")
    ap.add_argument("--engines", nargs="*", default=["fast", "hf"], choices=["fast", "hf"])
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no measurement after this many seconds (the JSON line still comes)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    from tensorsim.lm.models import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device) if device.type == "cuda" else torch.float32
    head = {"model": "tiny-llama" if args.tiny else "llama-2-7b-shape (random weights)", "dtype": str(dtype),
            "device": device_name()}
    try:
        model, cfg = build_model(args.tiny, device, dtype)
        from tensorsim.lm.llama import FastLlama

        fast = FastLlama(model)
    except Exception as e:  # noqa: BLE001 - the JSON line must come whatever fails
        emit(dict(head, error=f"{type(e).__name__}: {e}"[:500], results=[]), dtype)
        return
    bound = next((v for k, v in BANDWIDTH.items() if k in device_name()), None)
    rows = []
    for engine, b in [(e, b) for b in args.batch for e in args.engines]:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            rows.append({"engine": engine, "batch": b, "skipped": f"past --budget-s {args.budget_s:g}"})
            continue
        try:
            r = bench_batch(model, cfg, b, args.prompt_len, args.new_tokens, device, engine, fast)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at one batch: the others still count
            rows.append({"engine": engine, "batch": b, "error": f"{type(e).__name__}: {e}"[:300]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if bound:
            r["bandwidth_bound_GBps"] = bound / 1e9
            r["share_of_bound"] = round(r["achieved_GBps"] * 1e9 / bound, 3)
        # the grid at this batch: every generation costs new_tokens decode tokens + its share of prefill
        per_gen_s = (r["decode_step_ms"] / 1e3 * args.new_tokens + r["prefill_s"]) / b
        r["projected_grid_hours"] = round(GRID_GENERATIONS * per_gen_s / 3600, 2)
        rows.append(r)
        print(r, flush=True)
    emit(dict(head, results=rows), dtype)


if __name__ == "__main__":
    main()
