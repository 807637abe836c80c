"""SHA-256 of every output of the smoke trial (LLM and GMM agents), to show that a refactor changed no byte.

    python bench/smoke_digest.py --out before.json     # on the old tree
    python bench/smoke_digest.py --compare before.json # on the new tree: exit 1 and name the files that differ

summary.json is hashed without its timing fields (wall_time_s, new_tokens_per_s, agent_steps_per_s): they
measure the machine, not the simulation. The digests hold for one machine and one torch build (generated
text depends on the CPU's float rounding), so compare runs made on the same machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"llm": ["trial=smoke"], "gmm": ["trial=smoke", "agents=gmm"]}
TIMING = ("wall_time_s", "new_tokens_per_s", "agent_steps_per_s")


def digest_run(run_dir: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts):
        data = path.read_bytes()
        if path.name == "summary.json":
            summary = json.loads(data)
            for key in TIMING:
                summary.pop(key, None)
            data = json.dumps(summary, sort_keys=True).encode()
        out[str(path.relative_to(run_dir))] = hashlib.sha256(data).hexdigest()
    return out


def digests() -> dict[str, dict[str, str]]:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in RUNS.items():
            run_dir = Path(tmp) / name
            r = subprocess.run([sys.executable, "-m", "tensorsim", *overrides, f"hydra.run.dir={run_dir}"],
                               cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
            if r.returncode != 0:
                sys.exit(f"smoke run {name} failed: {r.stderr.strip().splitlines()[-1:]}")
            result[name] = digest_run(run_dir)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the digests here")
    ap.add_argument("--compare", type=Path, help="digests from another tree: report every file that differs")
    args = ap.parse_args()
    now = digests()
    if args.out:
        args.out.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(json.dumps({run: len(files) for run, files in now.items()}))
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = [f"{run}/{f}" for run in sorted(set(before) | set(now))
                  for f in sorted(set(before.get(run, {})) | set(now.get(run, {})))
                  if before.get(run, {}).get(f) != now.get(run, {}).get(f)]
        if differ:
            print("differ: " + ", ".join(differ))
            return 1
        print(f"identical: {sum(len(v) for v in now.values())} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
