"""Validation of the composed config before anything runs: one-line errors naming key, value and what
is allowed. (Hydra has already checked the override syntax and the config groups.)"""
from __future__ import annotations

import string

from .errors import UserError
from .graph import BACKENDS
from .models import check_weights
from .outputs import AUTO_PARQUET_ROWS, FORMATS as OUTPUT_FORMATS
from .populations import as_list
from .protocol import LABEL_RULES

AGENT_KINDS = ("llm", "gmm")
LABELERS = ("name", "centroid")
RETRIEVAL_KEYS = ("question", "entry")
ENGINES = ("auto", "fast", "hf")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def need(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise UserError(f"{key}={value!r} is not allowed: {allowed}")


# every boolean of the config: a typo must not become bool("maybe") = True
BOOLEANS = ("overwrite", "resume", "output.transcript", "output.agents", "output.plots", "retrieval.every_step",
            "model.chat_template", "model.trust_remote_code", "embedder.trust_remote_code",
            "agents.update_means", "agents.update_variances")


def validate_booleans(cfg) -> None:
    from omegaconf import OmegaConf

    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key, default=None)
        need(value is None or isinstance(value, bool), key, value, "true or false")


def validate_backend(cfg) -> None:
    """The triton kernel runs on CUDA only and keeps at most MAX_K neighbours: say so before anything loads."""
    uses_graph = cfg.agents.kind == "llm" or cfg.agents.get("knn") == "graph"
    if cfg.graph.backend == "faiss" and uses_graph:
        import importlib.util

        if importlib.util.find_spec("faiss") is None:  # an optional extra: faiss-cpu or faiss-gpu-cu12
            raise UserError("graph.backend='faiss' is not allowed: faiss is not installed (pip install "
                            "'tensorsim[cpu]' for faiss-cpu, or 'tensorsim[gpu]' for faiss-gpu-cu12), or use torch")
    if cfg.graph.backend != "triton" or not uses_graph:
        return
    import os

    import torch

    device = str(cfg.device)
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    need(on_cuda or os.environ.get("TRITON_INTERPRET") == "1", "graph.backend", "triton",
         f"a CUDA device (device={device} runs on the CPU here); use torch or faiss")
    try:
        from kernels.knn_triton import MAX_K
    except ImportError:
        raise UserError("graph.backend='triton' is not allowed: the triton package is not installed "
                        "(pip install triton), or use torch or faiss") from None
    k_max = max(as_list(cfg.trial.k))
    need(k_max <= MAX_K, "graph.backend", "triton", f"k <= {MAX_K} (trial.k={k_max}); use torch or faiss")


def validate(cfg) -> None:
    validate_booleans(cfg)
    t = cfg.trial
    need(_is_int(t.n) and t.n >= 2, "trial.n", t.n, "an integer >= 2")
    need(_is_int(t.steps) and t.steps >= 1, "trial.steps", t.steps, "an integer >= 1")
    need(_is_int(t.replicas) and t.replicas >= 1, "trial.replicas", t.replicas, "an integer >= 1")
    ks, ps = as_list(t.k), as_list(t.p)
    need(len(ks) >= 1, "trial.k", ks, "a number or a non-empty list")
    need(len(ps) >= 1, "trial.p", ps, "a number or a non-empty list")
    for k in ks:
        need(_is_int(k) and 1 <= k < t.n, "trial.k", k, f"an integer with 1 <= k < trial.n={t.n}")
    for p in ps:
        need(_is_num(p) and 0.0 <= p <= 1.0, "trial.p", p, "a probability in [0, 1]")
    need(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    threads = cfg.get("threads")
    need(threads is None or (_is_int(threads) and threads >= 1), "threads", threads, "null or an integer >= 1")
    need(_is_int(cfg.checkpoint.every) and cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every,
         "an integer >= 0 (0 = no checkpoints)")
    need(cfg.agents.kind in AGENT_KINDS, "agents.kind", cfg.agents.kind, f"one of {', '.join(AGENT_KINDS)}")
    need(cfg.graph.backend in BACKENDS, "graph.backend", cfg.graph.backend, f"one of {', '.join(BACKENDS)}")

    w = cfg.pattern
    need(_is_int(w.window) and 1 <= w.window <= t.steps, "pattern.window", w.window,
         f"an integer with 1 <= window <= trial.steps={t.steps}")
    need(_is_num(w.stable_min_stability) and 0 <= w.stable_min_stability <= 1, "pattern.stable_min_stability",
         w.stable_min_stability, "a number in [0, 1]")
    need(_is_int(w.decay_min_silo_drop) and w.decay_min_silo_drop >= 1, "pattern.decay_min_silo_drop",
         w.decay_min_silo_drop, "an integer >= 1")
    need(_is_num(w.decay_min_entropy_drop) and w.decay_min_entropy_drop > 0, "pattern.decay_min_entropy_drop",
         w.decay_min_entropy_drop, "a number > 0 (nats)")
    need(cfg.labeler in LABELERS, "labeler", cfg.labeler, f"one of {', '.join(LABELERS)}")
    validate_backend(cfg)
    fmt = cfg.output.get("format", "csv")
    need(fmt in OUTPUT_FORMATS, "output.format", fmt, f"one of {', '.join(OUTPUT_FORMATS)} (auto: parquet from "
                                                      f"{AUTO_PARQUET_ROWS:,} agent rows)")

    if cfg.agents.kind == "llm":
        validate_llm(cfg)
    else:
        refuse_unused_paths(cfg)


def refuse_unused_paths(cfg) -> None:
    """GMM agents read no knowledge base and load no model: a path given for one would be silently ignored."""
    for key, value in (("kb", cfg.get("kb")), ("model.path", cfg.model.get("path")),
                       ("embedder.path", cfg.embedder.get("path"))):
        need(not value, key, value, f"agents={cfg.agents.kind} uses no knowledge base, LLM or embedder "
                                    f"(drop it, or set agents=llm)")


def validate_llm(cfg) -> None:
    check_weights(cfg.model, "model")
    check_weights(cfg.embedder, "embedder")
    tpl = cfg.prompt.template
    need(isinstance(tpl, str), "prompt.template", tpl, "a string holding {context}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None}
    except ValueError as e:
        raise UserError(f"prompt.template is not a valid format string ({e}); write literal braces as {{{{ }}}}") from None
    need("context" in fields, "prompt.template", tpl, "a template holding the field {context}")
    need(fields <= {"context"}, "prompt.template", tpl, "only the field {context} (write other braces as {{ }})")
    need(isinstance(cfg.prompt.query, str) and cfg.prompt.query.strip(), "prompt.query", cfg.prompt.query,
         "a non-empty string")
    rule = cfg.prompt.get("require_label", False)
    need(isinstance(rule, bool) or rule in LABEL_RULES, "prompt.require_label", rule,
         f"one of {', '.join(LABEL_RULES)} (true = any, false = off)")
    system = cfg.prompt.get("system")
    need(system is None or isinstance(system, str), "prompt.system", system,
         'null (the chat template\'s default), "" (no system turn) or a text')
    g = cfg.generation
    need(_is_num(g.temperature) and g.temperature >= 0, "generation.temperature", g.temperature,
         "a number >= 0 (0 = greedy)")
    need(_is_num(g.top_p) and 0 < g.top_p <= 1, "generation.top_p", g.top_p, "a number in (0, 1]")
    need(_is_int(g.max_new_tokens) and g.max_new_tokens >= 1, "generation.max_new_tokens", g.max_new_tokens,
         "an integer >= 1")
    need(_is_int(g.max_retries) and g.max_retries >= 0, "generation.max_retries", g.max_retries, "an integer >= 0")
    need(_is_int(g.max_rows) and g.max_rows >= 1, "generation.max_rows", g.max_rows, "an integer >= 1")
    for switch in ("stop_at_sentence_end", "share_prefix", "dedup_prompts", "early_exit", "continuous", "cuda_graphs"):
        need(isinstance(g.get(switch, True), bool), f"generation.{switch}", g.get(switch), "true or false")
    need(g.get("engine", "auto") in ENGINES, "generation.engine", g.get("engine"), f"one of {', '.join(ENGINES)}")
    budget = g.get("memory_budget_gb")
    need(budget is None or (_is_num(budget) and budget > 0), "generation.memory_budget_gb", budget,
         "null or a number of GiB > 0")
    r = cfg.retrieval
    need(_is_int(r.top_r) and r.top_r >= 1, "retrieval.top_r", r.top_r, "an integer >= 1")
    need(r.key in RETRIEVAL_KEYS, "retrieval.key", r.key, f"one of {', '.join(RETRIEVAL_KEYS)}")
