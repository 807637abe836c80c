"""Copy fidelity of a model + prompt configuration: does an agent that reads a flower say that flower?

Every chain starts from one agent's knowledge-base flower answer. Each generation answers the paper's
prompt from the previous generation's answer (a chain of self-copies, as a mirroring agent does), with
the configuration's answer protocol (phrase rule, label rule, retries). Per generation it reports:
  context  P(the answer names its context's label)     origin  P(it names the chain's first flower)
  any      P(it names any label of the knowledge base)  distinct  share of distinct answers
  chars    mean answer length                           retries   regenerations per answer
  tokens   new tokens per answer, retries included
Variants are named override lists (`--variant NAME=key=value,key=value`); the defaults below are the
candidates compared in the README. Table per variant, then one JSON line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, emit  # noqa: E402

from tensorsim.core import rng  # noqa: E402
from tensorsim.core.labels import NameLabeler  # noqa: E402
from tensorsim.knowledge import load_kb  # noqa: E402
from tensorsim.lm.generate import Generator, SamplingConfig  # noqa: E402
from tensorsim.lm.models import load_llm, resolve_device, resolve_dtype  # noqa: E402
from tensorsim.lm.prompts import PromptBuilder  # noqa: E402
from tensorsim.lm.protocol import AnswerChecker, AnswerRules, generate_answers, label_rule  # noqa: E402

VARIANTS = {
    "chat_system": ["prompt.require_label=off"],
    "chat_no_system": ["prompt.require_label=off", "prompt.system=''"],
    "raw": ["prompt.require_label=off", "model.chat_template=false"],
    "chat_system_label_any": ["prompt.require_label=any"],
    "chat_system_label_context": ["prompt.require_label=context"],
    "chat_no_system_label_any": ["prompt.require_label=any", "prompt.system=''"],
    "chat_system_label_any_t0.5": ["prompt.require_label=any", "generation.temperature=0.5"],
    "chat_system_label_context_t0.5": ["prompt.require_label=context", "generation.temperature=0.5"],
}


def parse_variants(specs: list[str] | None) -> dict[str, list[str]]:
    if not specs:
        return dict(VARIANTS)
    out = {}
    for spec in specs:
        name, _, overrides = spec.partition("=")
        out[name] = VARIANTS[name] if not overrides and name in VARIANTS else [o for o in overrides.split(",") if o]
    return out


def run_chains(cfg, model, tok, chains: int, generations: int) -> dict:
    """Chains of self-copies for one configuration -> per-generation rates (lists) and totals."""
    kb = load_kb(cfg.kb)
    names = NameLabeler(kb.labels)
    g = cfg.generation
    gen = Generator(model, tok, SamplingConfig.from_config(g))
    builder = PromptBuilder(tok, cfg.prompt.template, cfg.prompt.answer_prefix, bool(cfg.model.chat_template),
                            cfg.prompt.get("system"))
    checker = AnswerChecker(AnswerRules(cfg.prompt.required_phrase, label_rule(cfg.prompt.require_label),
                                        int(g.max_retries)), names)
    contexts = [row[kb.topic_slot] for row in kb.answers] * chains
    origin = torch.tensor(kb.agent_labels * chains)  # [N]
    context_label = origin.clone()
    chain = torch.arange(len(contexts))
    rates = {key: [] for key in ("context", "origin", "any", "distinct", "chars", "retries", "tokens")}
    for step in range(generations):
        prompt_ids = builder(contexts)

        def generate(rows, attempt):
            keys = rng.mix(int(cfg.seed), chain[rows], step, attempt)
            return [builder.response(ids) for ids in gen([prompt_ids[r] for r in rows], keys)]

        tokens_before = gen.stats.new_tokens
        answers, counts = generate_answers(generate, contexts, checker)
        labels = counts.labels  # [N]
        N = len(answers)
        rates["context"].append(float(((labels == context_label) & (labels >= 0)).float().mean()))
        rates["origin"].append(float((labels == origin).float().mean()))
        rates["any"].append(float((labels >= 0).float().mean()))
        rates["distinct"].append(len(set(answers)) / N)
        rates["chars"].append(sum(map(len, answers)) / N)
        rates["retries"].append(float((counts.phrase_retries + counts.label_retries).sum()) / N)
        rates["tokens"].append((gen.stats.new_tokens - tokens_before) / N)
        contexts, context_label = answers, labels
    rates = {k: [round(x, 3) for x in v] for k, v in rates.items()}
    rates["examples"] = contexts[:3]
    return rates


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=2, help="chains per knowledge-base flower")
    ap.add_argument("--generations", type=int, default=4, help="self-copies per chain")
    ap.add_argument("--variant", action="append", help="NAME (a built-in) or NAME=key=value,key=value")
    ap.add_argument("overrides", nargs="*", help="overrides applied to every variant, e.g. seed=1")
    args = ap.parse_args(argv)
    result = {"bench": "fidelity", "chains": args.chains, "generations": args.generations, "variants": {}}
    loaded, dtype = {}, None
    for name, overrides in parse_variants(args.variant).items():
        cfg = config(*args.overrides, *overrides)
        device = resolve_device(cfg.device)
        key = (cfg.model.name, str(cfg.model.get("path")))
        if key not in loaded:
            dtype = resolve_dtype(cfg.dtype, device)
            loaded[key] = load_llm(cfg.model, device, dtype)
        rates = run_chains(cfg, *loaded[key], args.chains, args.generations)
        result["variants"][name] = {"overrides": overrides, "model": cfg.model.name, **rates}
        print(f"\n{name} ({' '.join(overrides)}; model {cfg.model.name})", flush=True)
        print("gen " + " ".join(f"{k:>8}" for k in ("context", "origin", "any", "distinct", "chars", "retries",
                                                   "tokens")))
        for i in range(args.generations):
            print(f"{i + 1:>3} " + " ".join(f"{rates[k][i]:8.3f}" for k in ("context", "origin", "any", "distinct",
                                                                             "chars", "retries", "tokens")),
                  flush=True)
    emit(result, dtype)


if __name__ == "__main__":
    main()
