"""`python -m tensorsim [overrides]`: run a trial (see conf/ and the README)."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from .errors import DiskFullError, NonFiniteError, Preempted, UserError

# exit statuses (README "Runs that survive"): 2 bad input, 3 non-finite values, 4 disk full, 5 stopped by a
# signal with a checkpoint to resume from
EXIT_USER, EXIT_NON_FINITE, EXIT_DISK_FULL, EXIT_PREEMPTED = 2, 3, 4, 5


def resume_command(run_dir) -> str:
    """The command that continues the run in run_dir (its config comes from the checkpoint)."""
    return f"python -m tensorsim resume=true {shlex.quote(f'hydra.run.dir={Path(run_dir).resolve()}')}"


def launcher_threads(cfg: DictConfig, hc) -> int | None:
    """threads=null under a launcher that gives each job cpus_per_task CPUs (hydra/launcher=local or
    slurm): that many torch threads, so parallel jobs do not each start one thread per core of the machine.
    None keeps cfg.threads (set explicitly, or no such launcher: torch's default)."""
    if cfg.get("threads") is not None or cfg.get("resume"):
        return None
    launcher = hc.get("launcher") or {}
    cpus = launcher.get("cpus_per_task") if hasattr(launcher, "get") else None
    return int(cpus) if isinstance(cpus, int) and cpus >= 1 else None


def resume_requeued_job(cfg: DictConfig, run_dir: str) -> None:
    """A scheduler's rerun of a job runs the command it was submitted with: set resume=true when its run
    directory holds an incomplete run with a checkpoint, so it continues instead of starting over."""
    from .checkpoint import resumes_by_itself

    reason = None if cfg.get("resume") else resumes_by_itself(Path(run_dir), os.environ)
    if reason:
        print(f"[tensorsim] requeued job ({reason}): resuming {run_dir} from its checkpoint", file=sys.stderr)
        with open_dict(cfg):
            cfg.resume = True


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from .outputs import is_disk_full
    from .run import simulate

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    resume_requeued_job(cfg, run_dir)
    threads = launcher_threads(cfg, hc)
    if threads is not None:
        with open_dict(cfg):
            cfg.threads = threads
    try:
        summary = simulate(cfg, run_dir, hydra_subdir=hc.output_subdir, overrides=list(hc.overrides.task))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER)
    except NonFiniteError as e:
        print(f"error: {e}; outputs up to the last checkpoint are kept in {run_dir}", file=sys.stderr)
        sys.exit(EXIT_NON_FINITE)
    except DiskFullError as e:
        then = f"; once space is freed: {resume_command(run_dir)}" if e.resumable else ""
        print(f"error: {e}{then}", file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
    except Preempted as e:
        print(f"stopped: {e}; continue with: {resume_command(run_dir)}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except OSError as e:  # a full disk before the first step (Hydra's files, the run's config)
        if not is_disk_full(e):
            raise
        print(f"error: no space left on the device ({e.strerror}: {e.filename}); nothing to resume yet",
              file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
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
