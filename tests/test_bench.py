"""The benchmarks' work accounting (bench/common.py): the GFLOP figures quoted next to their rates; and
the GPU check's plumbing (bench/gpu_check.sh, bench/gpu_decode.py), which must not fail on a bare GPU image."""
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


def test_gpu_check_reports_every_part_even_a_failed_or_stopped_one(tmp_path):
    """bench/gpu_part.sh: one JSON line per part with its own exit status, a benchmark's JSON result,
    a pytest tally, and a part stopped by its time limit still reported."""
    import json
    import subprocess

    script = f"""
        OUT={tmp_path}; source bench/gpu_part.sh
        part bench 20 python3 -c 'print("table"); print("{{\\"tok_per_s\\": 5}}")'
        part tests 20 python3 -c 'print("== 3 passed, 1 skipped in 2.0s =="); raise SystemExit(1)'
        part slow 1 sleep 30
    """
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(p["part"], p["rc"], p["timed_out"]) for p in lines] == [
        ("bench", 0, False), ("tests", 1, False), ("slow", 124, True)]
    assert lines[0]["result"] == {"tok_per_s": 5} and lines[1]["pytest"] == "3 passed, 1 skipped in 2.0s"
    assert lines[2]["seconds"] < 15 and "tail" in lines[1]
    assert (tmp_path / "parts.jsonl").read_text().splitlines() == r.stdout.splitlines()


def test_gpu_decode_imports_on_an_image_without_hydra():
    """A bare GPU image lacks hydra: bench/common.py imports it only where it composes a config."""
    import subprocess

    code = ("import sys; sys.modules['hydra'] = None; sys.path.insert(0, 'bench'); import gpu_decode, common; "
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_gpu_decode_builds_its_rotary_tables_and_always_prints_its_json(capsys):
    """init_empty_weights + to_empty leaves computed buffers uninitialised: the rotary tables are rebuilt
    (float32, as from_pretrained keeps them). With its time budget spent, the JSON line still comes."""
    import json

    import gpu_decode
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model, cfg = gpu_decode.build_model(True, torch.device("cpu"), torch.bfloat16)
    rotary = model.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq, LlamaRotaryEmbedding(config=cfg).inv_freq)
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
    gpu_decode.main(["--tiny", "--device", "cpu", "--batch", "2", "--new-tokens", "2", "--budget-s", "0"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "tiny-llama" and [r.get("skipped") is not None for r in result["results"]] == [True] * 2

def test_fidelity_bench_reports_consistent_rates(tmp_path):
    """bench/fidelity.py through its command line: one generation from the knowledge base's answers, with
    the label rule off and on. Rates are shares; at the first generation the context is the origin."""
    import json
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fidelity.py"), "--chains", "1", "--generations", "1",
                        "--variant", "off=prompt.require_label=off", "--variant", "ctx=prompt.require_label=context"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    off, ctx = result["variants"]["off"], result["variants"]["ctx"]
    for v in (off, ctx):
        assert v["context"][0] == v["origin"][0]  # generation 1 reads the chain's first flower
        assert len(v["context"]) == 1  # one value per generation
        assert 0 <= v["context"][0] <= v["any"][0] <= 1 and 0 < v["distinct"][0] <= 1
        assert v["tokens"][0] > 0 and v["chars"][0] > len("The prettiest flower is")
    assert off["retries"] == [0.0]  # the phrase is pre-filled, and no label rule
    assert ctx["retries"][0] > 0 and ctx["context"][0] > off["context"][0]


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

    from tensorsim.lm.models import cpu_has_fast_bf16

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


def test_calibration_table_reads_every_run_and_sets_the_papers_figures_beside(tmp_path):
    import json
    import subprocess

    from conftest import run_cli

    run = tmp_path / "grid"
    r = run_cli("trial=smoke", "agents=gmm", "trial.k=[1,2]", "trial.p=[0.2,0.7]", "trial.replicas=2",
                f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "calibration"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "calibration.py"), str(run), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.with_suffix(".json").read_text()) and result["host"]["cpu_cores"] >= 1
    cells = {(c["k"], c["p"]): c for c in result["cells"]}
    assert sorted(cells) == [(1, 0.2), (1, 0.7), (2, 0.2), (2, 0.7)]
    assert cells[(1, 0.2)]["paper_final_silos_mean"] == 7.5 and cells[(1, 0.7)]["paper_final_silos_mean"] == 7.75
    assert cells[(2, 0.2)]["paper_final_silos_mean"] is None  # the paper has no k=2
    for (k, p), c in cells.items():
        summary = json.loads((run / "cells" / f"k{k}_p{p}" / "summary.json").read_text())
        assert c["final_silos"] == [rep["final_n_silos"] for rep in summary["replicas"]]
        assert c["final_silos_mean"] == sum(c["final_silos"]) / 2
        assert c["last_change_step"] == [rep["last_change_step"] for rep in summary["replicas"]]
    assert "| 1 | 0.2 | 2 |" in out.with_suffix(".md").read_text()


def test_lora_roofline_counts_forward_and_input_backward_and_bounds_the_speedup(small_llm):
    """bench/lora.py: with the base frozen every token costs a forward and a backward to the inputs (4 FLOPs
    per weight), the head only where an answer token is predicted; the bound is the per-agent loop's step
    over that floor."""
    from lora import training_roofline

    model, _ = small_llm
    body, head = linear_weights(model)
    prompts, answers = [[1] * 90, [1] * 100], [[2] * 10, [2] * 20]
    r = training_roofline(model, prompts, answers, matmul_gflop_s=100.0, batched_train_s=2.0, per_agent_step_s=5.0)
    gflop = 4 * (body * 220 + head * 30) / 1e9
    assert abs(r["train_gflop_per_step"] - round(gflop, 1)) < 1e-9
    assert r["train_floor_s"] == round(gflop / 100, 2)
    assert r["train_achieved_GFLOP_per_s"] == round(gflop / 2.0, 1)
    assert r["speedup_bound_if_generation_free"] == round(5.0 / (gflop / 100), 2)
