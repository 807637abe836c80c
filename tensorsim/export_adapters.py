"""`python -m tensorsim.export_adapters RUN_DIR --agent i [--population b] --out DIR`: one agent's LoRA adapter
of an agents=lora run, in the layout `peft.PeftModel.from_pretrained(base, DIR)` loads. Reads the run's
adapters.safetensors (a completed run) or its checkpoint (a run still going)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError
from .lm.lora import save_peft_adapter


def stacked_adapters(run_dir: Path) -> tuple[dict, dict]:
    """-> (params {"layers.{i}.{proj}.A"/"B": stacked tensors}, {rank, alpha, target_modules, n,
    populations, base_model})."""
    from safetensors import safe_open

    final = run_dir / "adapters.safetensors"
    if final.is_file():
        with safe_open(str(final), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("tensorsim_stacked_lora", "null"))
            params = {k: f.get_tensor(k) for k in f.keys()}
        if meta is None:
            raise UserError(f"{final} was not written by tensorsim's agents=lora (no tensorsim_stacked_lora metadata)")
        return params, meta
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise UserError(f"{run_dir} holds neither adapters.safetensors nor checkpoint.pt: not an agents=lora run "
                        f"(or one that has not reached its first checkpoint)")
    import torch

    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    cfg = state["config"]
    if cfg["agents"]["kind"] != "lora" or "adapters" not in state["agents"]:
        raise UserError(f"{run_dir} is an agents={cfg['agents']['kind']} run: it has no adapters to export")
    a = cfg["agents"]
    params = state["agents"]["adapters"]
    R = next(iter(params.values())).shape[0]
    return params, {"rank": int(a["rank"]), "alpha": float(a["alpha"]), "target_modules": list(a["target_modules"]),
                    "n": int(cfg["trial"]["n"]), "populations": R // int(cfg["trial"]["n"]),
                    "base_model": str(cfg["model"].get("path") or cfg["model"]["source"])}


def export(run_dir: Path, agent: int, population: int, out: Path) -> Path:
    params, meta = stacked_adapters(run_dir)
    n, B = meta["n"], meta["populations"]
    if not 0 <= agent < n:
        raise UserError(f"--agent={agent} is not allowed: an agent index in 0..{n - 1}")
    if not 0 <= population < B:
        raise UserError(f"--population={population} is not allowed: a population index in 0..{B - 1}")
    save_peft_adapter(out, params, population * n + agent, meta["rank"], meta["alpha"], meta["target_modules"],
                      meta["base_model"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tensorsim.export_adapters", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--agent", type=int, required=True, help="agent index i within its population")
    ap.add_argument("--population", type=int, default=0, help="population b (a grid's cell and replica); default 0")
    ap.add_argument("--out", type=Path, required=True, help="directory to write the peft adapter into")
    args = ap.parse_args(argv)
    try:
        out = export(args.run_dir, args.agent, args.population, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[tensorsim] agent {args.agent} of population {args.population} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
