"""Helpers the dimension tests share: compose a config, run GMM agents in-process, read tables, and build
LLM agents on the tiny models."""
import csv

import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def gmm_cfg(*overrides):
    """trial=smoke with GMM agents and no plots, plus overrides."""
    return compose_cfg("agents=gmm", "trial=smoke", "output.plots=false", *overrides)


def gmm_run(tmp_path, name, *overrides):
    """A GMM run in-process -> its directory."""
    from tensorsim import run

    d = tmp_path / name
    run.simulate(gmm_cfg(*overrides), d, hydra_subdir=None)
    return d


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def drop_columns(path, columns):
    """A table's rows as lists without `columns` (what a grid cell adds to the same run alone)."""
    return [[v for key, v in r.items() if key not in columns] for r in rows(path)]


def tiny_llm_agents(dirs, *overrides):
    """LLMAgents of trial=smoke on the tiny models (tests/tiny_models.py), on the CPU."""
    import tiny_models

    from tensorsim.agents.llm import LLMAgents
    from tensorsim.core.populations import trial_populations
    from tensorsim.knowledge import load_kb
    from tensorsim.lm.models import Embedder, load_llm

    cfg = compose_cfg("trial=smoke", *tiny_models.overrides(dirs), *overrides)
    cpu = torch.device("cpu")
    model, tok = load_llm(cfg.model, cpu, torch.float32)
    pops = trial_populations(cfg.trial, cfg.seed)
    return LLMAgents(cfg, load_kb().take(cfg.trial.n), pops, model, tok, Embedder(cfg.embedder, cpu), cpu)
