"""Checkpoints of a run: written atomically every checkpoint.every steps, read back by resume=true, with
the Hydra files the run started with."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .errors import UserError
from .outputs import is_complete

CHECKPOINT = "checkpoint.pt"


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if is_complete(run_dir):
        raise UserError(f"resume=true but {run_dir} already holds a completed run")
    if not path.is_file():
        raise UserError(f"resume=true but {run_dir} has no {CHECKPOINT} (checkpoints are written every "
                        f"checkpoint.every steps; pass the run's directory as hydra.run.dir)")
    return torch.load(path, weights_only=False, map_location="cpu")  # a CUDA run resumes anywhere


def resumed_config(stored: dict, current):
    """The config a resumed run continues with: the one it started with, on the device this command
    names (device=cpu finishes a CUDA run on a CPU machine); device=auto keeps the run's own device."""
    cfg = OmegaConf.create(stored)
    if current.get("device", "auto") != "auto":
        cfg.device = current.device
    elif str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"this run started on device={cfg.device} and CUDA is not available here; "
                        f"resume it with device=cpu")
    return cfg


def save_checkpoint(run_dir: Path, state: dict) -> None:
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, run_dir / CHECKPOINT)  # a crash mid-save leaves the previous checkpoint intact


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def hydra_record(run_dir: Path, subdir: str | None) -> dict[str, bytes]:
    """The files Hydra wrote into run_dir/<subdir> when the run started (kept in every checkpoint)."""
    if not subdir:
        return {}
    d = run_dir / subdir
    return {name: (d / name).read_bytes() for name in HYDRA_FILES if (d / name).is_file()}


def restore_hydra_record(run_dir: Path, subdir: str | None, record: dict[str, bytes]) -> None:
    """Hydra rewrites run_dir/<subdir> with the resume command's config before a resumed run starts: move
    those files into <subdir>/resume/ and put back the ones the run started with, so the run's .hydra/
    describes the run, not the command that resumed it."""
    if not subdir or not record:
        return
    d = run_dir / subdir
    (d / "resume").mkdir(parents=True, exist_ok=True)
    for name in HYDRA_FILES:
        if (d / name).is_file():
            os.replace(d / name, d / "resume" / name)
    for name, data in record.items():
        tmp = d / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, d / name)
