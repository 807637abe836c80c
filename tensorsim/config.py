"""Validation of the composed config before anything runs: one-line errors naming key, value and what
is allowed. (Hydra has already checked the override syntax and the config groups.)"""
from __future__ import annotations

from .agents import KINDS, kind_module
from .core.graph import BACKENDS
from .core.populations import trial_populations
from .core.social import MIXES
from .errors import UserError, is_int, is_num, need
from .outputs import AUTO_PARQUET_ROWS, FORMATS as OUTPUT_FORMATS

LABELERS = ("name", "centroid")


# every boolean of the config: a typo must not become bool("maybe") = True
BOOLEANS = ("overwrite", "resume", "output.transcript", "output.agents", "output.plots", "retrieval.every_step",
            "model.chat_template", "model.trust_remote_code", "embedder.trust_remote_code",
            "agents.update_means", "agents.update_variances")


def validate_booleans(cfg) -> None:
    from omegaconf import OmegaConf

    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key, default=None)
        need(value is None or isinstance(value, bool), key, value, "true or false")


def validate_backend(cfg, k_max: int) -> None:
    """The triton kernel runs on CUDA only and keeps at most MAX_K neighbours: say so before anything loads."""
    uses_graph = kind_module(cfg.agents.kind).uses_graph(cfg)
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
    need(k_max <= MAX_K, "graph.backend", "triton", f"k <= {MAX_K} (trial.k={k_max}); use torch or faiss")


def validate(cfg) -> None:
    validate_booleans(cfg)
    t = cfg.trial
    need(is_int(t.n) and t.n >= 2, "trial.n", t.n, "an integer >= 2")
    need(is_int(t.steps) and t.steps >= 1, "trial.steps", t.steps, "an integer >= 1")
    need(is_int(t.replicas) and t.replicas >= 1, "trial.replicas", t.replicas, "an integer >= 1")
    need(is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    # k, p (numbers, schedules, Beta), types and noise: building the populations checks every value
    k_max = int(trial_populations(t, cfg.seed).k.max())
    threads = cfg.get("threads")
    need(threads is None or (is_int(threads) and threads >= 1), "threads", threads, "null or an integer >= 1")
    need(is_int(cfg.checkpoint.every) and cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every,
         "an integer >= 0 (0 = no checkpoints)")
    need(cfg.agents.kind in KINDS, "agents.kind", cfg.agents.kind, f"one of {', '.join(KINDS)}")
    need(cfg.graph.backend in BACKENDS, "graph.backend", cfg.graph.backend, f"one of {', '.join(BACKENDS)}")
    need(cfg.graph.get("mix", "uniform") in MIXES, "graph.mix", cfg.graph.get("mix"), f"one of {', '.join(MIXES)}")

    w = cfg.pattern
    need(is_int(w.window) and 1 <= w.window <= t.steps, "pattern.window", w.window,
         f"an integer with 1 <= window <= trial.steps={t.steps}")
    need(is_num(w.stable_min_stability) and 0 <= w.stable_min_stability <= 1, "pattern.stable_min_stability",
         w.stable_min_stability, "a number in [0, 1]")
    need(is_int(w.decay_min_silo_drop) and w.decay_min_silo_drop >= 1, "pattern.decay_min_silo_drop",
         w.decay_min_silo_drop, "an integer >= 1")
    need(is_num(w.decay_min_entropy_drop) and w.decay_min_entropy_drop > 0, "pattern.decay_min_entropy_drop",
         w.decay_min_entropy_drop, "a number > 0 (nats)")
    need(cfg.labeler in LABELERS, "labeler", cfg.labeler, f"one of {', '.join(LABELERS)}")
    validate_backend(cfg, k_max)
    fmt = cfg.output.get("format", "csv")
    need(fmt in OUTPUT_FORMATS, "output.format", fmt, f"one of {', '.join(OUTPUT_FORMATS)} (auto: parquet from "
                                                      f"{AUTO_PARQUET_ROWS:,} agent rows)")
    kind_module(cfg.agents.kind).validate(cfg)
