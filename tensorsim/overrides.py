"""Command-line overrides checked before Hydra composes them: an unknown key is one line naming the key
and the closest valid one (exit 2), instead of Hydra's multi-line error; options the chosen agent kind
does not read are named once."""
from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig

from .errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
# keys only LLM agents read: with agents=gmm they change nothing
LLM_ONLY = ("labeler", "kb", "model", "embedder", "prompt", "generation", "retrieval")


def _parse(args: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # malformed syntax: Hydra's own message says where
        return None


def _groups() -> set[str]:
    return {p.relative_to(CONF).as_posix() for p in CONF.rglob("*") if p.is_dir()}


def _choices(overrides, groups: set[str]) -> list[str]:
    """Group selections (model=..., agents=gmm), first choice of a sweep: they decide which keys exist."""
    out = []
    for o in overrides:
        if o.key_or_group in groups and not o.key_or_group.startswith("hydra"):
            value = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else o.value()
            out.append(f"{o.key_or_group}={value}")
    return out


def composed(choices: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=choices)


def _keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k in cfg.keys():
        v, key = cfg._get_node(k), f"{prefix}{k}"  # the node, unresolved: `???` values must not raise
        out.append(key)
        if isinstance(v, DictConfig):
            out += _keys(v, key + ".")
    return out


def check(args: list[str]) -> list[str]:
    """Raise UserError for an override of a key the config does not have; -> warnings to print."""
    overrides = _parse(args)
    if overrides is None:
        return []
    groups = _groups()
    try:
        cfg = composed(_choices(overrides, groups))
    except Exception:  # a bad group choice: Hydra names the valid ones
        return []
    keys = _keys(cfg)
    given = {o.key_or_group: o for o in overrides}
    knn = given["agents.knn"].value() if "agents.knn" in given else cfg.agents.get("knn")
    warnings = []
    for o in overrides:
        key = o.key_or_group
        if key in groups or key.startswith("hydra") or o.input_line.startswith(("+", "~")):
            continue
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else " (see conf/config.yaml)"
            raise UserError(f"{key} is not a config key{hint}")
        ignored = key.split(".")[0] in LLM_ONLY or (key == "graph.backend" and knn != "graph")
        if cfg.agents.kind == "gmm" and ignored:
            warnings.append(f"[tensorsim] warning: {key} is ignored with agents=gmm (it applies to LLM agents)")
    return warnings
