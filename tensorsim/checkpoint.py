"""Checkpoints of a run: written atomically, read back by resume=true, with the Hydra files the run
started with.

A checkpoint is one safetensors file: every tensor of the state under a numbered name, and the rest of the
state (nested dicts, lists and tuples of str, int, float, bool, None and bytes) as JSON in the uint8 tensor
STRUCTURE, where a tensor stands as {"$tensor": name}, bytes as {"$bytes": name}, a tuple as {"$tuple":
[...]}, a non-finite float as {"$float": "nan"} and a dict with int keys (torch optimizers' state_dict) as
{"$items": [[key, value], ...]}; a str key that starts with "$" gets one more "$". Reading it runs no
code (no pickle), so a checkpoint copied from someone else can at worst be refused. Anything else in a
state is a TypeError at save time: an agent kind's state_dict() must stay within these types.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .errors import UserError
from .outputs import is_complete, write_bytes_durably, write_json_atomic

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # torch.save pickles of earlier versions: read with weights_only=True
RUN_CONFIG = ".tensorsim-run.json"  # the config a run started with, to refuse another run's checkpoint
FORMAT = "tensorsim-checkpoint"
VERSION = 1
STRUCTURE = "__structure__"
# what a resume command may set differently from the run: where and how fast it runs, not what it computes
MAY_DIFFER = ("device", "threads", "resume", "overwrite")
# the top-level entries every checkpoint holds, with the type each must have
REQUIRED = {"t": int, "config": dict, "agents": dict, "history": torch.Tensor, "S": torch.Tensor,
            "E": torch.Tensor, "silos": torch.Tensor, "new_tokens": int, "generations": int, "elapsed": float,
            "offsets": list, "hydra_files": dict, "protocol": dict}


def _encode(value, tensors: dict, where: str):
    """value -> JSON-able structure; its tensors and bytes go into `tensors` under numbered names."""
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        # one copy, on the CPU, owning its storage: safetensors refuses tensors that share one
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": name}
    if isinstance(value, bytes):
        name = str(len(tensors))
        empty = torch.empty(0, dtype=torch.uint8)  # frombuffer refuses an empty buffer
        tensors[name] = torch.frombuffer(bytearray(value), dtype=torch.uint8) if value else empty
        return {"$bytes": name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}  # JSON has no nan/inf
    if isinstance(value, (list, tuple)):
        items = [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"$tuple": items}
    if isinstance(value, dict):
        return _encode_dict(value, tensors, where)
    raise TypeError(f"checkpoint state {where}: {type(value).__name__} is not allowed (tensors, dicts with str "
                    f"or int keys, lists, tuples, str, int, float, bool, None and bytes only)")


def _encode_dict(value: dict, tensors: dict, where: str):
    bad = [k for k in value if not isinstance(k, (str, int)) or isinstance(k, bool)]
    if bad:
        raise TypeError(f"checkpoint state {where}: key {bad[0]!r} is not a str or an int")
    if all(isinstance(k, str) for k in value):
        return {("$" + k if k.startswith("$") else k): _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
    return {"$items": [[k, _encode(v, tensors, f"{where}.{k}")] for k, v in value.items()]}


def _decode(node, tensors: dict):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (key, ref), = node.items()
        if key == "$tensor":
            return tensors[ref]
        if key == "$bytes":
            return tensors[ref].numpy().tobytes()
        if key == "$float":
            return float(ref)
        if key == "$tuple":
            return tuple(_decode(v, tensors) for v in ref)
        if key == "$items":
            return {k: _decode(v, tensors) for k, v in ref}
    return {(k[1:] if k.startswith("$") else k): _decode(v, tensors) for k, v in node.items()}


def dumps(state: dict) -> bytes:
    """A checkpoint's bytes (see the module's docstring)."""
    import safetensors.torch

    tensors: dict[str, torch.Tensor] = {}
    structure = {"format": FORMAT, "version": VERSION, "state": _encode(state, tensors, "state")}
    text = json.dumps(structure, ensure_ascii=False, allow_nan=False).encode("utf-8")
    tensors[STRUCTURE] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return safetensors.torch.save(tensors)


def loads(data: bytes) -> dict:
    """dumps' inverse. Anything that is not such a checkpoint raises ValueError (one line)."""
    import safetensors.torch

    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # SafetensorError derives from Exception only
        raise ValueError(f"not a safetensors file ({str(e).splitlines()[0]})") from None
    if STRUCTURE not in tensors:
        raise ValueError("a safetensors file, but not a tensorsim checkpoint")
    try:
        structure = json.loads(tensors.pop(STRUCTURE).numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"its structure is not JSON ({e})") from None
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        raise ValueError("a safetensors file, but not a tensorsim checkpoint")
    if structure.get("version") != VERSION:
        raise ValueError(f"checkpoint format version {structure.get('version')!r}; this tensorsim reads {VERSION}")
    try:
        return _decode(structure["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"its structure names a tensor it lacks ({e})") from None


def _check_entries(state) -> None:
    """The checkpoint holds every entry a run reads, each of its type, consistent with each other."""
    if not isinstance(state, dict):
        raise ValueError("its state is not a dict")
    for key, typ in REQUIRED.items():
        if not isinstance(state.get(key), typ) or (typ is int and isinstance(state[key], bool)):
            raise ValueError(f"entry {key!r} is missing or not a {typ.__name__}")
    t = state["t"]
    for key in ("history", "S", "E", "silos"):
        if state[key].dim() < 1 or state[key].shape[0] != t:
            raise ValueError(f"entry {key!r} holds {tuple(state[key].shape)[:1]} steps, not the checkpoint's t={t}")


def load_checkpoint(run_dir: Path) -> dict:
    """The checkpoint of the run in run_dir; a missing, damaged or foreign file is a one-line UserError."""
    if is_complete(run_dir):
        raise UserError(f"resume=true but {run_dir} already holds a completed run")
    path, legacy = run_dir / CHECKPOINT, run_dir / LEGACY_CHECKPOINT
    if not path.is_file() and legacy.is_file():
        return _load_legacy(legacy)
    if not path.is_file():
        raise UserError(f"resume=true but {run_dir} has no {CHECKPOINT} (checkpoints are written every "
                        f"checkpoint.every steps; pass the run's directory as hydra.run.dir)")
    try:
        state = loads(path.read_bytes())
        _check_entries(state)
    except ValueError as e:
        raise UserError(f"cannot resume from {path}: {e}. The file was left as it is: put back an intact "
                        f"copy, or start the run again with overwrite=true instead of resume=true") from None
    return state


def _load_legacy(path: Path) -> dict:
    """A checkpoint.pt of an earlier version: torch's restricted unpickler only (tensors and plain data)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        _check_entries(dict({"protocol": {}, "hydra_files": {}}, **state) if isinstance(state, dict) else state)
    except Exception as e:  # the restricted unpickler raises many kinds; none may become a traceback
        raise UserError(f"cannot resume from {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                        f"(read with torch.load(weights_only=True))") from None
    return dict({"protocol": {}, "hydra_files": {}}, **state)


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write state to a temporary file, then rename it over the checkpoint: a crash, a second signal or a
    full disk mid-save leaves the previous checkpoint as it was."""
    data = dumps(state)
    tmp = run_dir / (CHECKPOINT + ".tmp")
    try:
        write_bytes_durably(tmp, data)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file would only take disk space
        raise
    os.replace(tmp, run_dir / CHECKPOINT)
    (run_dir / LEGACY_CHECKPOINT).unlink(missing_ok=True)  # superseded; it must never be read instead


def refuse_unfinished(run_dir: Path, overwrite: bool) -> None:
    """A fresh run in the directory of an unfinished one would delete what resume=true continues from."""
    found = [name for name in (CHECKPOINT, LEGACY_CHECKPOINT) if (run_dir / name).is_file()]
    if found and not overwrite:
        raise UserError(f"run directory {run_dir} holds an unfinished run ({found[0]}): continue it with "
                        f"resume=true, or start it again with overwrite=true")


def remove_checkpoints(run_dir: Path) -> None:
    """A fresh or completed run: no checkpoint of an earlier run may be resumed over its tables."""
    for name in (CHECKPOINT, CHECKPOINT + ".tmp", LEGACY_CHECKPOINT, RUN_CONFIG):
        (run_dir / name).unlink(missing_ok=True)


def requeued_job(environ) -> str | None:
    """Why this process is a scheduler's rerun of a job, or None: SLURM_RESTART_COUNT > 0 (any requeue:
    preemption with PreemptMode=REQUEUE, scontrol requeue, a node failure with --requeue) or a submitit job
    (submitit reruns the same submission, without resume=true, after checkpoint_and_try_requeue)."""
    if environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0"):
        return f"SLURM_RESTART_COUNT={environ['SLURM_RESTART_COUNT']}"
    if environ.get("SUBMITIT_EXECUTOR"):
        return f"SUBMITIT_EXECUTOR={environ['SUBMITIT_EXECUTOR']}"
    return None


def resumes_by_itself(run_dir: Path, environ) -> str | None:
    """A requeued job whose run directory holds an incomplete run with a checkpoint continues it as if
    resume=true had been given (the job's command line is the one it was submitted with) -> the reason."""
    reason = requeued_job(environ)
    has_checkpoint = (run_dir / CHECKPOINT).is_file() or (run_dir / LEGACY_CHECKPOINT).is_file()
    return reason if reason and has_checkpoint and not is_complete(run_dir) else None


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in MAY_DIFFER}


def _differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """Leaves where two config trees differ: [(dotted key, value in a, value in b)]."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _name_differences(diffs, where_a: str, where_b: str) -> str:
    shown = "; ".join(f"{key}={a!r} in {where_a}, {b!r} in {where_b}" for key, a, b in diffs[:3])
    return shown + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else "")


def record_run_config(run_dir: Path, config: dict) -> None:
    """Kept next to the tables while the run is incomplete: the config they were written with."""
    write_json_atomic(run_dir / RUN_CONFIG, config)


def check_same_run(run_dir: Path, stored: dict, cfg, overrides: list[str] | None) -> None:
    """Refuse a checkpoint that belongs to another config than this run directory's tables (a file copied
    from another run), or than what the resume command sets explicitly, naming the first differences."""
    path = run_dir / RUN_CONFIG
    if path.is_file():
        try:
            own = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot resume: {path} is unreadable ({e})") from None
        if not isinstance(own, dict):
            raise UserError(f"cannot resume: {path} holds a {type(own).__name__}, not the run's config")
        diffs = _differences(_comparable(stored), _comparable(own))
        if diffs:
            raise UserError(f"cannot resume: {run_dir / CHECKPOINT} is from another run: "
                            f"{_name_differences(diffs, 'the checkpoint', 'this run directory')}")
    diffs = []
    for key in _override_keys(overrides or []):
        if key.split(".")[0] in MAY_DIFFER or key.startswith("hydra"):
            continue
        asked = OmegaConf.select(cfg, key, default="<absent>")
        if OmegaConf.is_config(asked):
            asked = OmegaConf.to_container(asked, resolve=True)
        diffs += _differences(_select(stored, key), asked, key + ".")
    if diffs:
        raise UserError(f"cannot resume: the checkpoint's run differs from this command: "
                        f"{_name_differences(diffs, 'the checkpoint', 'the command')}. A resumed run keeps "
                        f"its own config: drop those overrides (device= and threads= may change)")


def _select(tree: dict, key: str):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def _override_keys(overrides: list[str]) -> list[str]:
    """Dotted config keys that command-line overrides set: `trial.n=8` -> trial.n, `agents=gmm` -> agents."""
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if "=" in o and key:
            keys.append(key.split("@")[0].replace("/", "."))
    return keys


def check_state_matches(built, loaded, where: str = "agents") -> None:
    """The checkpoint's agent state fits the agents this config builds: every entry they hold is there,
    and every tensor in both has the same shape and dtype (a tampered or mismatched file stops here, not
    with a shape error mid-step). Lists (LLM agents' growing text table) and entries only the checkpoint
    holds (state created during the run, e.g. an optimizer's) are not compared. A tensor the fresh agents
    hold empty along dim 0 is a per-step history (LoRA agents' drift): only its other dimensions must match."""
    if isinstance(built, dict):
        if not isinstance(loaded, dict):
            raise UserError(f"cannot resume: the checkpoint's {where} is a {type(loaded).__name__}, not a dict")
        missing = sorted(set(built) - set(loaded))
        if missing:
            raise UserError(f"cannot resume: the checkpoint's {where} lacks {missing} (this run's agents hold them)")
        for k in built:
            check_state_matches(built[k], loaded[k], f"{where}.{k}")
    elif isinstance(built, torch.Tensor):
        history = built.dim() > 0 and built.shape[0] == 0
        same_shape = isinstance(loaded, torch.Tensor) and (
            loaded.shape[1:] == built.shape[1:] and loaded.dim() == built.dim() if history else loaded.shape == built.shape)
        if not same_shape or loaded.dtype != built.dtype:
            got = (f"{tuple(loaded.shape)} {loaded.dtype}" if isinstance(loaded, torch.Tensor)
                   else type(loaded).__name__)
            raise UserError(f"cannot resume: the checkpoint's {where} is {got}, this run's agents hold "
                            f"{tuple(built.shape)} {built.dtype}")


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
