"""The benchmarks' work accounting (bench/common.py): the GFLOP figures quoted next to their rates."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from common import ISA_FLAGS, emit, linear_weights, parse_cpuinfo, useful_gflop  # noqa: E402


def test_linear_weights_count_every_projection_and_the_head(small_llm):
    model, _ = small_llm
    c = model.config
    d, f, hd = c.hidden_size, c.intermediate_size, c.head_dim
    per_layer = d * (c.num_attention_heads + 2 * c.num_key_value_heads) * hd + c.num_attention_heads * hd * d + 3 * d * f
    assert linear_weights(model) == (c.num_hidden_layers * per_layer, c.vocab_size * d)
    # SmolLM2-135M: 106.2M weights in its layers' projections, 28.3M in the (tied) head
    assert linear_weights(model) == (106_168_320, 28_311_552)


def test_useful_gflop_charges_the_head_only_where_logits_are_taken(small_llm):
    model, _ = small_llm
    body, head = linear_weights(model)
    # 100 prefilled tokens in 4 rows, then 10 decoded rows
    assert abs(useful_gflop(model, 100, 4, 10) - 2 * (body * 110 + head * 14) / 1e9) < 1e-9
    assert useful_gflop(model, 0, 0, 0) == 0


AVX512_AMX_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 2
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_parse_cpuinfo_counts_physical_cores_and_reads_flags():
    info = parse_cpuinfo(AVX512_AMX_CPUINFO)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["cores"] == 2  # three logical CPUs, two of them hyper-threads of core 0
    assert {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"} <= info["flags"]
    assert parse_cpuinfo("") == {"model": None, "flags": set(), "cores": None}


def test_every_bench_json_records_the_machine(capsys):
    """emit() is the last line of every benchmark: the machine, ISA, bf16 support, dtype and torch in it."""
    import json
    import os
    from pathlib import Path

    import torch

    from tensorsim.models import cpu_has_fast_bf16

    emit({"rate": 1.5}, torch.bfloat16)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rate"] == 1.5
    h = out["host"]
    assert set(h) >= {"cpu_model", "cpu_cores", "logical_cpus", "isa", "native_bf16", "dtype", "torch"}
    assert isinstance(h["cpu_model"], str) and h["cpu_model"]
    assert h["logical_cpus"] == os.cpu_count() and (h["cpu_cores"] is None or 1 <= h["cpu_cores"] <= os.cpu_count())
    assert set(h["isa"]) == set(ISA_FLAGS) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = parse_cpuinfo(cpuinfo.read_text())["flags"]
        assert h["isa"] == {f: f in flags for f in ISA_FLAGS}
    assert h["native_bf16"] is cpu_has_fast_bf16()
    assert h["dtype"] == "bfloat16" and h["torch"] == torch.__version__
