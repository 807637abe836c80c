"""`python -m tensorsim [overrides]`: run a trial (see conf/ and the README)."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import NonFiniteError, UserError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from .run import simulate

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
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
        print(f"  k={c['k']} p={c['p']:g}: mean final silos {c['mean_final_n_silos']:.2f}")


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
