"""The benchmarks' work accounting (bench/common.py): the GFLOP figures quoted next to their rates."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from common import linear_weights, useful_gflop  # noqa: E402


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


def test_fidelity_bench_reports_consistent_rates(tmp_path):
    """bench/fidelity.py through its command line: one generation from the knowledge base's answers, with
    the label rule off and on. Rates are shares; at the first generation the context is the origin."""
    import json
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fidelity.py"), "--chains", "1", "--generations", "2",
                        "--variant", "off=prompt.require_label=off", "--variant", "ctx=prompt.require_label=context"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    off, ctx = result["variants"]["off"], result["variants"]["ctx"]
    for v in (off, ctx):
        assert v["context"][0] == v["origin"][0]  # generation 1 reads the chain's first flower
        for i in range(2):
            assert 0 <= v["context"][i] <= v["any"][i] <= 1 and 0 < v["distinct"][i] <= 1
            assert v["tokens"][i] > 0 and v["chars"][i] > len("The prettiest flower is")
    assert off["retries"] == [0.0, 0.0]  # the phrase is pre-filled, and no label rule
    assert ctx["retries"][0] > 0 and ctx["context"][0] > off["context"][0]
