"""agents=lora's learning step, batched against a per-agent peft loop, on the same workload in one process.

Workload per agent and step: generate an answer (greedy, max_new_tokens, no sentence stop) through the
agent's adapter, then one Adam step of the adapter on an answer it read (a KB answer after the prompt).
  batched     tensorsim: one generate call for all n rows (the fast engine, each row its own adapter)
              and one train_step (one forward and backward over all rows)
  per_agent   peft: for each agent, load its adapter and optimizer state into one PeftModel, one
              optimizer step, model.generate, store the adapter back
Prints one JSON line: seconds per phase, agent-steps/s of each mode and their ratio, and the roofline of
the training step: the arithmetic it needs (frozen base weights: a forward and a backward to the inputs,
no weight gradients), the matmul rate measured here, and so the fastest any batched training step can
be here and the most a batched mode can gain over the per-agent loop even if generating were free.

    .venv/bin/python bench/lora.py --n 6 --steps 1            # the embedded SmolLM2
    .venv/bin/python bench/lora.py --n 30 --model-path DIR     # another LLaMA-family model
    python3 bench/lora.py --n 30 --random smollm2 --dtype bfloat16 --device cuda   # gpu_check.sh: random
        weights of SmolLM2-135M's shape and the test tokenizer (tests/tiny_models.py), nothing downloaded
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tensorsim
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, config, emit, linear_weights, machine_peaks  # noqa: E402


def workload(cfg, tokenizer, n: int):
    """-> (prompt ids of each agent, the answer ids each trains on): KB topic answers as contexts, and
    agent i reads agent i+1's answer."""
    from tensorsim.knowledge import load_kb
    from tensorsim.lm.prompts import PromptBuilder

    kb = load_kb(cfg.kb).take(n)
    contexts = [row[kb.topic_slot] for row in kb.answers]
    prompts = PromptBuilder(tokenizer, cfg.prompt.template, cfg.prompt.answer_prefix, bool(cfg.model.chat_template),
                            cfg.prompt.get("system"))(contexts)
    prefix = cfg.prompt.answer_prefix
    answers = [tokenizer(c[len(prefix):] if c.startswith(prefix) else c, add_special_tokens=False)["input_ids"]
               for c in contexts[1:] + contexts[:1]]
    return prompts, answers


def batched(model, tokenizer, lora, prompts, answers, steps: int, max_new: int, lr: float) -> dict:
    from tensorsim.lm.generate import Generator, SamplingConfig
    from tensorsim.lm.lora import Adam, train_step

    n = len(prompts)
    gen = Generator(model, tokenizer, SamplingConfig(temperature=0, max_new_tokens=max_new, stop_at_sentence_end=False))
    gen.use_adapters(lora)
    opt = Adam(lora.params, lr)
    agents, keys = torch.arange(n), torch.zeros(n, dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    gen(prompts, keys, agents)  # warm-up: allocator, oneDNN packing
    train_step(model, lora, opt, prompts, answers, agents, pad)
    t_gen = t_train = 0.0
    tokens = 0
    for _ in range(steps):
        with Timer() as tg:
            out = gen(prompts, keys, agents)
        with Timer() as tt:
            train_step(model, lora, opt, prompts, answers, agents, pad)
        t_gen, t_train = t_gen + tg.seconds, t_train + tt.seconds
        tokens += sum(len(o) for o in out)
    total = t_gen + t_train
    return {"generate_s": round(t_gen, 3), "train_s": round(t_train, 3), "seconds": round(total, 3),
            "new_tokens": tokens, "agent_steps_per_s": round(n * steps / total, 3)}


def per_agent(model, tokenizer, lora, prompts, answers, steps: int, max_new: int, lr: float,
              budget_s: float | None = None) -> dict:
    """The loop a peft user writes: one PeftModel, each agent's adapter and Adam state swapped in and out."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from tensorsim.lm.lora import peft_tensors

    n = len(prompts)
    pm = get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.targets,
                                          lora_dropout=0.0))
    trainable = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=lr)
    states = [None] * n
    adapters = [peft_tensors(lora.params, lora.keys(), i) for i in range(n)]  # each agent's, as peft saves it
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def one(i):
        set_peft_model_state_dict(pm, adapters[i])
        opt.state.clear()
        if states[i] is not None:
            opt.load_state_dict(states[i])
        ids = torch.tensor([prompts[i] + answers[i]])
        opt.zero_grad()
        logits = pm(input_ids=ids).logits[0, len(prompts[i]) - 1:-1].float()
        torch.nn.functional.cross_entropy(logits, torch.tensor(answers[i])).backward()
        opt.step()
        states[i] = opt.state_dict()
        adapters[i] = {k: v.clone() for k, v in get_peft_model_state_dict(pm).items()}
        with torch.no_grad():
            out = pm.generate(input_ids=torch.tensor([prompts[i]]), max_new_tokens=max_new, do_sample=False,
                              pad_token_id=pad)
        return out.shape[1] - len(prompts[i])

    one(0)  # warm-up
    tokens = done = 0
    with Timer() as tm:
        for _ in range(steps):
            for i in range(n):  # the baseline: a Python loop over agents, by construction
                tokens += one(i)
                done += 1
                if budget_s is not None and time.perf_counter() - tm.t0 > budget_s:
                    break
            else:
                continue
            break
    pm.unload()
    return {"seconds": round(tm.seconds, 3), "agent_steps": done, "new_tokens": tokens,
            "agent_steps_per_s": round(done / tm.seconds, 3)}


def training_roofline(model, prompts, answers, matmul_gflop_s: float, batched_train_s: float,
                      per_agent_step_s: float) -> dict:
    """The training step's useful arithmetic against the machine's matmul rate. Every token goes through
    the decoder's linear maps forward and backward (2 + 2 multiply-add x 2 per weight: the base is
    frozen, so no weight gradients), the head only where an answer token is predicted; LoRA's own
    r-sized products, attention scores and norms are left out (a few %), so the floor is a lower bound.
    -> GFLOP per step, the floor in seconds, the rate the batched step reached, and
    per_agent_step_s / floor: the most any batched mode can gain here while generation costs nothing."""
    body, head = linear_weights(model)
    tokens = sum(len(p) + len(a) for p, a in zip(prompts, answers))
    predicted = sum(len(a) for a in answers)
    gflop = 4 * (body * tokens + head * predicted) / 1e9
    floor = gflop / matmul_gflop_s
    return {"train_gflop_per_step": round(gflop, 1), "matmul_GFLOP_per_s": matmul_gflop_s,
            "train_floor_s": round(floor, 2), "train_achieved_GFLOP_per_s": round(gflop / batched_train_s, 1),
            "train_share_of_matmul_peak": round(floor / batched_train_s, 3),
            "speedup_bound_if_generation_free": round(per_agent_step_s / floor, 2)}


SHAPES = {  # random-weight LLaMA shapes (vocabulary 32000: the test tokenizer uses its first 400 ids)
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
}


def random_model(shape: str, device, dtype):
    """-> (LlamaForCausalLM of `shape` with N(0, 0.02) weights, the tokenizer of tests/tiny_models.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import tokenizer as test_tokenizer

    tok = test_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], vocab_size=32000, max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model, tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--model-path", default=None, help="a local LLaMA-family model (default: the embedded SmolLM2)")
    ap.add_argument("--random", choices=sorted(SHAPES), default=None, help="random weights of this shape")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop the per-agent loop after this many seconds (its rate over the agents done)")
    args = ap.parse_args()

    from tensorsim.lm.lora import StackedLoRA
    from tensorsim.lm.models import load_llm, resolve_device, resolve_dtype

    overrides = [f"trial.n={args.n}", f"dtype={args.dtype}", f"device={args.device}"]
    if args.model_path:
        overrides += ["model.source=path", f"model.path={args.model_path}"]
    cfg = config(*overrides)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if args.random:
        model, tokenizer = random_model(args.random, device, dtype)
    else:
        model, tokenizer = load_llm(cfg.model, device, dtype)
    model.requires_grad_(False)
    prompts, answers = workload(cfg, tokenizer, args.n)
    targets = args.targets.split(",")

    def fresh():
        return StackedLoRA(model.config, args.n, args.rank, 2.0 * args.rank, targets, device, seed=0)

    ours = batched(model, tokenizer, fresh(), prompts, answers, args.steps, args.max_new_tokens, args.lr)
    theirs = per_agent(model, tokenizer, fresh(), prompts, answers, args.steps, args.max_new_tokens, args.lr,
                       args.budget_s)
    peaks = machine_peaks(device, dtype)
    roofline = training_roofline(model, prompts, answers, peaks["matmul_GFLOP_per_s"], ours["train_s"] / args.steps,
                                 theirs["seconds"] / (theirs["agent_steps"] / args.n))
    emit({"bench": "lora", "n": args.n, "steps": args.steps, "max_new_tokens": args.max_new_tokens,
          "rank": args.rank, "targets": targets, "model": f"random {args.random}" if args.random else str(args.model_path or cfg.model.name),
          "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
          "batched": ours, "per_agent_peft": theirs,
          "speedup": round(ours["agent_steps_per_s"] / theirs["agent_steps_per_s"], 2), "roofline": roofline,
          "read_GB_per_s": peaks["read_GB_per_s"]}, dtype)


if __name__ == "__main__":
    main()
