"""Time tensorsim.core.graph.knn backends (torch, faiss, triton) on random Gaussian points.

    python bench/knn_backends.py                      # B=1, d=30, k=25, n = 1e3, 1e4, 1e5
    python bench/knn_backends.py --interpret          # also triton under TRITON_INTERPRET=1 (tiny n)
    python bench/knn_backends.py --device cuda        # on a GPU: torch, faiss (GPU if available), triton

Progress goes to stderr; the last line of stdout is one JSON object with the environment and, per
(backend, n), the median seconds per call, or why the run was skipped. Runs go smallest n first;
a run whose time, extrapolated as n^2 from the same backend's largest finished run, would exceed
--max-call-s, or push the whole benchmark past --max-total-s, is skipped (the default run fits in
about 2 minutes on 2 CPU cores; knn_torch at n=1e5 on CPU would take tens of minutes). Triton runs
only on CUDA, or with --interpret on CPU for the --interpret-sizes. Every backend's indices are
compared with the torch backend's where both ran (rows identical, as a fraction).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated n")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--d", type=int, default=30)
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--backends", default="torch,faiss,triton")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--interpret", action="store_true",
                   help="run triton under TRITON_INTERPRET=1 on CPU (slow), for --interpret-sizes only")
    p.add_argument("--interpret-sizes", default="256,512")
    p.add_argument("--max-call-s", type=float, default=75.0, help="skip a run estimated to take longer")
    p.add_argument("--max-total-s", type=float, default=110.0, help="skip runs that would exceed this total")
    p.add_argument("--min-time-s", type=float, default=1.0, help="repeat a call until this much time (max 5)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.interpret and args.device == "cpu":  # must precede the first import of triton
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from tensorsim.core.graph import knn

    device = torch.device(args.device)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    interp_sizes = [int(float(s)) for s in args.interpret_sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "python": platform.python_version()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    available = []
    for b in backends:
        try:
            if b == "faiss":
                import faiss
                env["faiss"] = faiss.__version__
                env["faiss_gpu"] = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
            elif b == "triton":
                import triton
                env["triton"] = triton.__version__
                if device.type != "cuda" and not args.interpret:
                    log("triton: skipped (needs --device cuda, or --interpret for CPU)")
                    continue
                env["triton_interpret"] = args.interpret and device.type != "cuda"
            available.append(b)
        except ImportError as e:
            log(f"{b}: not available ({e})")

    # smallest n first, every backend at each n, so that estimates exist before the big runs
    plan = sorted({(n, b) for b in available
                   for n in (interp_sizes if b == "triton" and device.type != "cuda" else sizes)},
                  key=lambda nb: (nb[0], available.index(nb[1])))
    results, answers, largest = [], {}, {}
    t_start = time.perf_counter()
    for n, b in plan:
        row = {"backend": b, "B": args.B, "n": n, "d": args.d, "k": args.k}
        results.append(row)
        if b in largest:
            n0, t0 = largest[b]
            est = t0 * (n / n0) ** 2
            left = args.max_total_s - (time.perf_counter() - t_start)
            if est > args.max_call_s or est > left:
                row["skipped"] = f"estimated {est:.3g} s per call (from n={n0}: {t0:.3g} s); " \
                                 f"limits {args.max_call_s:g} s per call, {max(left, 0):.3g} s left in total"
                log(f"{b:6s} n={n:<7d} skipped: {row['skipped']}")
                continue
        g = torch.Generator().manual_seed(args.seed + n)
        x = torch.randn(args.B, n, args.d, generator=g).to(device)
        if device.type == "cuda" and b == "triton":
            knn(x, args.k, backend=b)  # compile for this shape's specialisation
        times = []
        while True:
            sync()
            t = time.perf_counter()
            idx = knn(x, args.k, backend=b)
            sync()
            times.append(time.perf_counter() - t)
            if sum(times) >= args.min_time_s or len(times) >= 5:
                break
        row["seconds"] = statistics.median(times)
        row["repeats"] = len(times)
        largest[b] = (n, row["seconds"])
        answers[(n, b)] = idx.cpu()
        if b != "torch" and (n, "torch") not in answers and n <= 5000:  # small: reference, untimed
            answers[(n, "torch")] = knn(x, args.k, backend="torch").cpu()
        if b != "torch" and (n, "torch") in answers:
            row["rows_identical_to_torch"] = float((idx.cpu() == answers[(n, "torch")]).all(-1).float().mean())
        log(f"{b:6s} n={n:<7d} {row['seconds']:.4g} s/call ({len(times)} calls)")
    return {"env": env, "total_s": round(time.perf_counter() - t_start, 2), "results": results}


if __name__ == "__main__":
    result = main()
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from common import emit  # after main(): TRITON_INTERPRET must be set before torch is imported

    emit(result, torch.float32)  # distances are float32 in every backend
