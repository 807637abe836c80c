"""Synthetic runs in the published layout of arXiv 2412.06834: per run a wide CSV `output{p*10}_{k}_{replica}.csv`
with the first half of the steps and `..._2nd.csv` with the second half (its step column restarting at 0),
one column per agent, each cell a list literal of one answer. Small n and T, trajectories chosen by hand
so that every metric is known in advance."""
import csv
from pathlib import Path

FLOWERS = ["rose", "tulip", "lily", "daisy", "orchid", "peony"]


def converging(n: int, T: int, at: int, winner: int = 0) -> list[list[str]]:
    """Every agent names its own flower, half of them switch at step 1, all name the winner from step `at`."""
    rows = []
    for t in range(T):
        if t == 0:
            rows.append([FLOWERS[i] for i in range(n)])
        elif t < at:
            rows.append([FLOWERS[i - i % 2] for i in range(n)])
        else:
            rows.append([FLOWERS[winner]] * n)
    return rows


def frozen(n: int, T: int) -> list[list[str]]:
    """n silos of one agent each, at every step."""
    return [[FLOWERS[i] for i in range(n)] for _ in range(T)]


def _write(path: Path, steps: range, rows: list[list[str]], first_step: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([""] + [str(i) for i in range(len(rows[0]))])  # the authors' header: an unnamed step column
        for j, t in enumerate(steps):
            w.writerow([first_step + j] + [f"['The prettiest flower is the {x}, lovely in June.']" for x in rows[t]])
    return path


def write_run(folder: Path, p: float, k: int, replica: int, rows: list[list[str]], split: bool = True) -> list[Path]:
    """The run's files in the authors' naming: output{p*10}_{k}_{replica}.csv and, split, its _2nd half."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"output{round(p * 10)}_{k}_{replica}"
    T = len(rows)
    half = T // 2 if split else T
    files = [_write(folder / f"{stem}.csv", range(half), rows, 0)]
    if split:
        files.append(_write(folder / f"{stem}_2nd.csv", range(half, T), rows, 0))
    return files
