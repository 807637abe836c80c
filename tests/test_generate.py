import torch

from tensorsim.core import rng
from tensorsim.knowledge import load_kb
from tensorsim.lm.generate import Generator, SamplingConfig, common_prefix_len, inverse_cdf, sample
from tensorsim.lm.prompts import PAPER_TEMPLATE, PromptBuilder


def test_sample_follows_temperature_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    N = 40_000
    u = rng.uniform(3, torch.arange(N))
    draws = sample(logits.expand(N, -1), u, temperature=0.75, top_p=1.0)
    freq = torch.bincount(draws, minlength=4).double() / N
    expected = torch.softmax(logits.double() / 0.75, -1)
    assert (freq - expected).abs().max() < 0.01


def test_sample_top_p_keeps_only_the_nucleus_renormalised():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    N = 40_000
    draws = sample(logits.expand(N, -1), rng.uniform(4, torch.arange(N)), temperature=1.0, top_p=0.7)
    freq = torch.bincount(draws, minlength=4).double() / N
    # nucleus = {0.5, 0.3} (0.5 < 0.7, 0.8 >= 0.7): renormalised to 0.625 / 0.375
    assert freq[2] == 0 and freq[3] == 0
    assert abs(freq[0] - 0.625) < 0.01


def test_two_level_inverse_cdf_matches_the_distribution_over_a_large_vocabulary():
    """1000 tokens (not a multiple of the 256-token block), some of weight zero: frequencies follow the
    weights and a zero-weight token is never drawn, even for u next to 1 and at block edges."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1000, generator=g) ** 4
    w[[0, 255, 256, 511, 700, 999]] = 0.0  # block edges and the last token
    N = 200_000
    u = rng.uniform(11, torch.arange(N))
    draws = inverse_cdf(w.expand(N, -1), u)
    freq = torch.bincount(draws, minlength=1000).double() / N
    assert (freq - w.double() / w.sum()).abs().max() < 0.002
    assert freq[[0, 255, 256, 511, 700, 999]].sum() == 0
    edge = torch.tensor([0.0, 1e-9, 0.5, 1 - 1e-7, 1 - 2**-24])
    picked = inverse_cdf(w.expand(5, -1), edge)
    assert bool((w[picked] > 0).all()) and picked[0] == 1  # u=0 takes the first positive token
    # same draws as a single cumsum over the whole vocabulary
    cdf = w.cumsum(0)
    one_level = torch.searchsorted(cdf, (u[:5000] * cdf[-1])[:, None], right=True).squeeze(-1)
    assert (one_level == draws[:5000]).float().mean() > 0.999


def test_greedy_is_argmax():
    logits = torch.randn(5, 11)
    assert torch.equal(sample(logits, torch.rand(5), 0.0, 1.0), logits.argmax(-1))


def test_common_prefix_leaves_a_token_per_row():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4]]) == 2
    assert common_prefix_len([[1, 2], [1, 2, 3]]) == 1


def _prompts(tokenizer, contexts):
    return PromptBuilder(tokenizer, PAPER_TEMPLATE, "The prettiest flower is")(contexts)


def test_fast_paths_match_plain_decoding(small_llm):
    """Shared prefix, dedup of identical prompts and early exit change cost, not answers (greedy)."""
    model, tok = small_llm
    kb = load_kb()
    contexts = [kb.answers[i][0] for i in (0, 1, 2)] + [kb.answers[0][0]] * 2  # two duplicates
    prompts = _prompts(tok, contexts)
    keys = rng.mix(0, torch.arange(len(prompts)))
    fast = Generator(model, tok, SamplingConfig(temperature=0.0, max_new_tokens=24))
    plain = Generator(model, tok, SamplingConfig(temperature=0.0, max_new_tokens=24, share_prefix=False,
                                                 dedup_prompts=False, early_exit=False))
    a, b = fast(prompts, keys), plain(prompts, keys)
    assert a == b
    assert a[0] == a[3] == a[4]  # identical prompts, greedy -> identical answers
    assert fast.stats.forward_rows == 3 and plain.stats.forward_rows == 5  # duplicates prefilled once
    assert fast.stats.new_tokens <= plain.stats.new_tokens
    # decode work: with early exit a row is decoded once per sampled token but its last; without, every
    # row rides along until the longest answer ends (the benchmarks' GFLOP counts rest on this)
    assert fast.stats.decode_rows == fast.stats.new_tokens - len(prompts)
    longest = max(len(x) for x in a)
    assert plain.stats.decode_rows % len(prompts) == 0 and plain.stats.decode_rows >= len(prompts) * (longest - 1)
    assert plain.stats.decode_rows > fast.stats.decode_rows


def test_a_row_does_not_depend_on_its_batch(small_llm):
    """Sampling keys are per row: the same row gives the same text alone or in a batch."""
    model, tok = small_llm
    kb = load_kb()
    prompts = _prompts(tok, [kb.answers[i][0] for i in range(4)])
    keys = rng.mix(5, torch.arange(4))
    gen = Generator(model, tok, SamplingConfig(temperature=0.75, max_new_tokens=20))
    together = gen(prompts, keys)
    alone = gen(prompts[2:3], keys[2:3])
    assert together[2] == alone[0]
    # micro-batching (max_rows) does not change answers either
    small = Generator(model, tok, SamplingConfig(temperature=0.75, max_new_tokens=20, max_rows=3))
    assert small(prompts, keys) == together


def test_continuous_batching_refills_slots_without_changing_answers(small_llm, monkeypatch):
    """10 prompts through 4 cache slots: refilling a slot as soon as an answer ends gives the answers of
    fixed micro-batches and of one batch of all rows, in fewer decode passes than fixed micro-batches."""
    model, tok = small_llm
    kb = load_kb()
    prompts = _prompts(tok, [kb.answers[i][0] for i in range(8)] + [kb.answers[0][0]] * 2)
    keys = rng.mix(9, torch.arange(len(prompts)))

    def run(**settings):
        gen = Generator(model, tok, SamplingConfig(temperature=0.75, max_new_tokens=20, **settings))
        passes, real = [], gen._decode
        monkeypatch.setattr(gen, "_decode", lambda *a: passes.append(a[-1].numel()) or real(*a))
        return gen(prompts, keys), passes

    refilled, refilled_passes = run(max_rows=4)
    chunked, chunked_passes = run(max_rows=4, continuous=False)
    whole, _ = run(max_rows=256)
    assert refilled == chunked == whole
    assert len(refilled_passes) < len(chunked_passes)
    assert max(refilled_passes) <= 4 and sum(refilled_passes) == sum(chunked_passes)  # same rows decoded


def test_stops_at_sentence_end_and_drops_eos(small_llm):
    model, tok = small_llm
    kb = load_kb()
    prompts = _prompts(tok, [kb.answers[i][0] for i in range(6)])
    gen = Generator(model, tok, SamplingConfig(temperature=0.75, max_new_tokens=60))
    out = gen(prompts, rng.mix(1, torch.arange(6)))
    for ids in out:
        assert tok.eos_token_id not in ids
        text = tok.decode(ids)
        ended = text.rstrip().rstrip("\"')").endswith((".", "!", "?"))
        assert ended or len(ids) == 60
