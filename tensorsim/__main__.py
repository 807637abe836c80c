"""`python -m tensorsim [overrides]`: run a trial (see conf/ and the README)."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from .errors import NonFiniteError, UserError


def launcher_threads(cfg: DictConfig, hc) -> int | None:
    """threads=null under a launcher that gives each job cpus_per_task CPUs (hydra/launcher=local or
    slurm): that many torch threads, so parallel jobs do not each start one thread per core of the machine.
    None keeps cfg.threads (set explicitly, or no such launcher: torch's default)."""
    if cfg.get("threads") is not None or cfg.get("resume"):
        return None
    launcher = hc.get("launcher") or {}
    cpus = launcher.get("cpus_per_task") if hasattr(launcher, "get") else None
    return int(cpus) if isinstance(cpus, int) and cpus >= 1 else None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from .run import simulate

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    threads = launcher_threads(cfg, hc)
    if threads is not None:
        with open_dict(cfg):
            cfg.threads = threads
    try:
        summary = simulate(cfg, run_dir, hydra_subdir=hc.output_subdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as e:
        print(f"error: {e}; outputs up to the last checkpoint are kept in {run_dir}", file=sys.stderr)
        sys.exit(3)
    print(f"[tensorsim] done in {summary['wall_time_s']:.1f}s -> {run_dir}")
    for r in summary.get("replicas", []):
        print(f"  replica {r['replica']}: {r['final_n_silos']} silo(s), pattern {r['pattern']}")
    for c in summary.get("cells", []):
        where = " ".join(f"{key}={v:g}" if isinstance(v, (int, float)) else f"{key}={v}" for key, v in c.items()
                         if key not in ("dir", "mean_final_n_silos"))
        print(f"  {where}: mean final silos {c['mean_final_n_silos']:.2f}")


def cli() -> None:
    from .overrides import check

    try:
        for warning in check(sys.argv[1:]):
            print(warning, file=sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
