"""How often the embedded model's answers follow the protocol, with and without the answer prefix.

For every agent's starting context (the 30 flower answers), --samples answers each, with the assistant
turn pre-filled with prompt.answer_prefix and with it empty (the paper's protocol as is). Counts, per
variant: answers holding the required phrase on the first try, answers naming a flower, answers naming
the context's own flower. No regeneration, so the first-try rates show. Last line: one JSON object.
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args(argv)
    cfg = config()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tok = load_llm(cfg.model, device, dtype)
    kb = load_kb()
    labeler = NameLabeler(kb.labels)
    g = cfg.generation
    gen = Generator(model, tok, SamplingConfig(temperature=g.temperature, top_p=g.top_p,
                                               max_new_tokens=g.max_new_tokens))
    contexts = [row[kb.topic_slot] for row in kb.answers] * args.samples
    own = torch.tensor(kb.agent_labels * args.samples)
    keys = rng.mix(cfg.seed, torch.arange(len(contexts)))
    result = {"samples": len(contexts), "model": cfg.model.name}
    for name, prefix in (("with_prefix", cfg.prompt.answer_prefix), ("without_prefix", "")):
        builder = PromptBuilder(tok, cfg.prompt.template, prefix, bool(cfg.model.chat_template))
        answers = [builder.response(ids) for ids in gen(builder(contexts), keys)]
        labels = labeler(answers)
        result[name] = {
            "required_phrase": round(sum(cfg.prompt.required_phrase.lower() in a.lower() for a in answers)
                                     / len(answers), 3),
            "names_a_flower": round(float((labels >= 0).float().mean()), 3),
            "names_own_flower": round(float((labels == own).float().mean()), 3),
            "examples": answers[:3],
        }
        print(name, {k: v for k, v in result[name].items() if k != "examples"}, flush=True)
    emit(result, dtype)


if __name__ == "__main__":
    main()
