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
