"""The three knn backends (torch, triton, faiss) against a brute-force reference.

Convention (tensorsim.core.graph): k nearest OTHER points by Euclidean distance, nearest first, ties to
the lower index.

The reference builds the full distance matrix from differences, accumulated feature by feature in
float32 (the numbers the triton and faiss backends rank by), and sorts by (distance, index) with a
stable sort. triton and faiss must match it exactly on every case. On integer-valued data all
arithmetic is exact, so knn_torch (which ranks by cdist(...)**2) must match exactly too; on Gaussian
data it may only differ between distances equal to float32 rounding.

The triton kernel runs under the Triton interpreter (TRITON_INTERPRET=1, CPU) in ONE subprocess,
so that this process never imports the triton kernel at all (the interpreter mode is fixed when a
kernel is defined) and other tests are unaffected. The subprocess re-imports this file and runs
`_triton_worker`, which prints one JSON line of per-case results; it runs in the background while
the faiss and torch tests run, and the triton tests (last in the file) collect it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tensorsim.core.graph import knn, knn_torch

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- reference
def reference_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Brute force: full [B, n, n] squared distances by differences (float32, feature order),
    diagonal = inf, stable sort by distance (so equal distances stay in index order), self removed."""
    x = x.to(torch.float32)
    B, n, d = x.shape
    dist = torch.zeros(B, n, n)
    for j in range(d):
        dist = dist + (x[:, :, None, j] - x[:, None, :, j]).square()
    eye = torch.eye(n, dtype=torch.bool)
    dist = dist.masked_fill(eye, float("inf"))
    order = torch.sort(dist, dim=-1, stable=True).indices  # [B, n, n]
    # drop self even where other distances overflowed to inf and tie with the masked diagonal
    not_self = order != torch.arange(n)[None, :, None]
    return order[not_self].view(B, n, n - 1)[..., :k]


def exact_dists(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """float64 squared distances from every point to the neighbours idx: [B, n, k]"""
    x = x.double()
    nb = torch.gather(x[:, None].expand(-1, x.shape[1], -1, -1), 2,
                      idx[..., None].expand(-1, -1, -1, x.shape[2]))  # [B, n, k, d]
    return (nb - x[:, :, None]).square().sum(-1)


def assert_same_up_to_rounding(got: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, rtol=1e-5):
    """Identical, except that neighbours may swap where their distances agree to float32 rounding."""
    if torch.equal(got, ref):
        return
    dg, dr = exact_dists(x, got), exact_dists(x, ref)
    torch.testing.assert_close(dg, dr, rtol=rtol, atol=0)
    rows = (got != ref).any(-1)
    assert rows.float().mean() < 0.01, f"{int(rows.sum())} rows differ"


# ----------------------------------------------------------------------------------------- data
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def integer_points(B, n, d, seed, hi=8):
    """Random integer coordinates in [-hi, hi]: every distance is exact in float32, many tie."""
    return torch.randint(-hi, hi + 1, (B, n, d), generator=_gen(seed)).float()


def gaussian_points(B, n, d, seed):
    return torch.randn(B, n, d, generator=_gen(seed))


def lattice_points(side, dup, seed):
    """A side x side grid (lots of equal distances) plus `dup` duplicated grid points, shuffled,
    shifted and scaled by powers of two (exact). [1, side*side + dup, 2]"""
    g = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    g = g.reshape(-1, 2).float()
    g = torch.cat([g, g[:dup]])
    g = g[torch.randperm(g.shape[0], generator=_gen(seed))]
    return (g * 0.25 + 3.0)[None]


def cube_points(seed):
    """Corners of a 3-cube and its centre, duplicated: equal distances in every direction."""
    c = torch.tensor([[i, j, l] for i in (0, 2) for j in (0, 2) for l in (0, 2)] + [[1, 1, 1]]).float()
    c = torch.cat([c, c, c[:4]])
    return c[torch.randperm(c.shape[0], generator=_gen(seed))][None]


# (name, x, k, triton block sizes); kept small for the interpreter
def cases():
    return [
        ("int_B2_n70_d5_k7", integer_points(2, 70, 5, 0), 7, dict(block_m=32, block_n=32)),
        ("int_B1_n93_d30_k25", integer_points(1, 93, 30, 1), 25, dict(block_m=64, block_n=32)),
        ("int_B3_n33_d1_kmax", integer_points(3, 33, 1, 2, hi=20), 32, dict(block_m=32, block_n=16)),
        ("int_B1_n90_d3_k64", integer_points(1, 90, 3, 3, hi=3), 64, dict(block_m=64, block_n=32)),
        ("int_B1_n41_d2_k1", integer_points(1, 41, 2, 4, hi=2), 1, dict(block_m=8, block_n=8)),
        ("gauss_B1_n150_d30_k25", gaussian_points(1, 150, 30, 5), 25, {}),
        ("gauss_B2_n77_d7_k10", gaussian_points(2, 77, 7, 6) * 100 + 1e3, 10, dict(block_m=32, block_n=32)),
        ("gauss_float64_B1_n50_d4_k5", gaussian_points(1, 50, 4, 11).double(), 5, dict(block_m=16, block_n=16)),
        ("int_B1_n140_d2_k128", integer_points(1, 140, 2, 12, hi=30), 128, dict(block_m=128, block_n=64)),
        ("lattice_10x10_dup13_k4", lattice_points(10, 13, 7), 4, dict(block_m=32, block_n=32)),
        ("lattice_10x10_dup13_k12", lattice_points(10, 13, 8), 12, dict(block_m=32, block_n=64)),
        ("cube_dup_k9", cube_points(9), 9, dict(block_m=8, block_n=8)),
        ("all_identical_k10", torch.full((2, 40, 3), 1.5), 10, dict(block_m=16, block_n=16)),
    ]


A = 2.0**63  # float32 squares: A**2 = 2**126 is finite, (2A)**2 = 2**128 overflows to inf
OVERFLOW_X = torch.tensor([[[3 * A, 0.0], [0.0, 0.0], [A, 0.0], [2 * A, 0.0], [-A, 5.0]]])
# distances of 2+ units of A are inf and tie with each other (lower index first), but never with self;
# 2**126 + 25 rounds to 2**126, so rows 1 ties points 2 and 4
OVERFLOW_EXPECTED = torch.tensor([[[3, 1, 2, 4], [2, 4, 0, 3], [1, 3, 0, 4], [0, 2, 1, 4], [1, 0, 2, 3]]])


# ----------------------------------------------------------------------------------------- triton worker
def _triton_worker() -> None:
    """Runs in the subprocess with TRITON_INTERPRET=1; prints {case: "ok" | error} as JSON."""
    from kernels.knn_triton import knn_triton

    res = {}
    for name, x, k, blocks in cases():
        try:
            ref = reference_knn(x, k)
            got = knn_triton(x, k, **blocks)
            res[name] = "ok" if torch.equal(got, ref) else f"mismatch in {int((got != ref).any(-1).sum())} rows"
        except Exception as e:  # report, don't crash the whole batch
            res[name] = f"{type(e).__name__}: {e}"
    # default block sizes through the public dispatcher
    x = integer_points(2, 70, 4, 10)
    res["dispatch_default_blocks"] = "ok" if torch.equal(knn(x, 9, backend="triton"), reference_knn(x, 9)) else "mismatch"
    got = knn_triton(OVERFLOW_X, 4, block_m=8, block_n=8)
    res["overflow_self_excluded"] = "ok" if torch.equal(got, OVERFLOW_EXPECTED) else f"got {got.tolist()}"
    for k in (0, -1, 70, 71, 129):
        n = 70 if k != 129 else 200
        try:
            knn_triton(torch.zeros(1, n, 2), k)
            res[f"bad_k_{k}"] = "no error"
        except ValueError as e:
            res[f"bad_k_{k}"] = "ok" if f"k={k}" in str(e) else f"message lacks k: {e}"
    print(json.dumps(res))


# ----------------------------------------------------------------------------------------- faiss
@pytest.mark.parametrize("name,x,k", [c[:3] for c in cases()], ids=[c[0] for c in cases()])
def test_faiss_matches_reference(name, x, k):
    pytest.importorskip("faiss")
    from kernels.knn_faiss import knn_faiss
    ref = reference_knn(x, k)
    assert torch.equal(knn_faiss(x, k), ref)
    # no margin: forces the widening / brute-force paths whenever the k-th neighbour is tied
    assert torch.equal(knn_faiss(x, k, margin=0), ref)
    assert torch.equal(knn(x, k, backend="faiss"), ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_faiss_larger(seed):
    """Sizes where faiss searches only a margin of candidates (m < n), with and without ties."""
    pytest.importorskip("faiss")
    from kernels.knn_faiss import knn_faiss
    for x, k in [(gaussian_points(1, 1000, 30, seed), 25),
                 (integer_points(1, 1000, 3, seed, hi=5), 20),  # lots of exact ties and duplicates
                 (lattice_points(25, 60, seed), 8),
                 (torch.zeros(1, 600, 4), 5)]:  # all duplicates: widening up to brute force
        ref = reference_knn(x, k)
        assert torch.equal(knn_faiss(x, k), ref)
        assert torch.equal(knn_faiss(x, k, margin=0), ref)


def test_faiss_overflow_self_excluded():
    pytest.importorskip("faiss")
    from kernels.knn_faiss import knn_faiss
    assert torch.equal(reference_knn(OVERFLOW_X, 4), OVERFLOW_EXPECTED)
    assert torch.equal(knn_faiss(OVERFLOW_X, 4), OVERFLOW_EXPECTED)


@pytest.mark.parametrize("k", [0, -1, 70, 71])
def test_faiss_bad_k(k):
    pytest.importorskip("faiss")
    from kernels.knn_faiss import knn_faiss
    with pytest.raises(ValueError, match=f"k={k}"):
        knn_faiss(torch.zeros(1, 70, 2), k)


# ----------------------------------------------------------------------------------------- torch
@pytest.mark.parametrize("name,x,k", [c[:3] for c in cases()], ids=[c[0] for c in cases()])
def test_torch_matches_reference(name, x, k):
    ref = reference_knn(x, k)
    if name.startswith("gauss"):
        assert_same_up_to_rounding(knn_torch(x, k), ref, x)
        assert_same_up_to_rounding(knn_torch(x, k, row_chunk=16, col_chunk=24), ref, x)
    else:  # exact arithmetic: must be identical, also across tile boundaries
        assert torch.equal(knn_torch(x, k), ref)
        assert torch.equal(knn_torch(x, k, row_chunk=16, col_chunk=24), ref)


def test_torch_larger_gaussian():
    x = gaussian_points(1, 1000, 30, 3)
    assert_same_up_to_rounding(knn_torch(x, 25), reference_knn(x, 25), x)


def test_torch_overflow_self_excluded():
    assert torch.equal(knn_torch(OVERFLOW_X, 4), OVERFLOW_EXPECTED)


@pytest.mark.parametrize("k", [0, -1, 70, 71])
def test_torch_bad_k(k):
    with pytest.raises(ValueError, match=f"k={k}"):
        knn_torch(torch.zeros(1, 70, 2), k)


# ----------------------------------------------------------------------------------------- triton
# The interpreter subprocess is slow (~15 s), so it is started in the background when this module's
# first test runs, and collected by the triton tests, which come last: the faiss and torch tests
# run meanwhile. A second subprocess, without the interpreter, checks that CPU tensors are refused.
_REFUSE_CODE = ("import torch\nfrom kernels.knn_triton import knn_triton\n"
                "try:\n    knn_triton(torch.zeros(1, 8, 2), 3)\nexcept RuntimeError as e:\n    print('refused', e)\n")


def _start_python(code: str, interpret: bool) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module", autouse=True)
def triton_procs(request):
    """{name: Popen} of the background triton checks (empty without triton, or when no triton test
    was selected); killed if unfinished."""
    wanted = any(item.name.startswith("test_triton") for item in request.session.items)
    if not wanted or importlib.util.find_spec("triton") is None:
        yield {}
        return
    procs = {"interpret": _start_python("import test_knn_backends as t; t._triton_worker()", interpret=True),
             "refuse": _start_python(_REFUSE_CODE, interpret=False)}
    yield procs
    for p in procs.values():
        if p.poll() is None:  # not collected (triton tests deselected or failed early)
            p.kill()
            p.communicate()


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return out


@pytest.fixture(scope="module")
def triton_results(triton_procs):
    if not triton_procs:
        pytest.skip("triton not installed")
    return json.loads(_finish(triton_procs["interpret"]).strip().splitlines()[-1])


TRITON_CHECKS = [c[0] for c in cases()] + ["dispatch_default_blocks", "overflow_self_excluded"] + [
    f"bad_k_{k}" for k in (0, -1, 70, 71, 129)]


@pytest.mark.parametrize("check", TRITON_CHECKS)
def test_triton_interpreted(triton_results, check):
    assert triton_results[check] == "ok", triton_results[check]


def test_triton_refuses_cpu_without_interpreter(triton_procs):
    if not triton_procs:
        pytest.skip("triton not installed")
    assert "refused" in _finish(triton_procs["refuse"])


# ----------------------------------------------------------------------------------------- triton on a GPU
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                    reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("name,x,k,blocks", cases(), ids=[c[0] for c in cases()])
def test_triton_compiled_on_cuda(name, x, k, blocks):
    """The kernel compiled for the GPU (not interpreted) gives the reference's neighbours exactly."""
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set: the kernel would be interpreted, not compiled")
    from kernels.knn_triton import knn_triton

    assert torch.equal(knn_triton(x.cuda(), k, **blocks).cpu(), reference_knn(x, k))
    if name == "int_B2_n70_d5_k7":  # the public dispatcher with default blocks, and float overflow
        assert torch.equal(knn(x.cuda(), k, backend="triton").cpu(), reference_knn(x, k))
        assert torch.equal(knn_triton(OVERFLOW_X.cuda(), 4, block_m=8, block_n=8).cpu(), OVERFLOW_EXPECTED)
