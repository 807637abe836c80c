"""tensorsim.lm.llama (the fast LLaMA forward) against the transformers forward it replaces."""
import pytest
import torch

from tensorsim.core import rng
from tensorsim.errors import UserError
from tensorsim.knowledge import load_kb
from tensorsim.lm.generate import Generator, SamplingConfig
from tensorsim.lm.llama import FastLlama, GraphedDecode, KVCache, Linear, unsupported_reason
from tensorsim.lm.prompts import PAPER_TEMPLATE, PromptBuilder


def _tiny(model_cls_name="LlamaForCausalLM", **overrides):
    import transformers

    torch.manual_seed(0)
    config_cls = getattr(transformers, model_cls_name.replace("ForCausalLM", "Config"))
    kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
    kw.update(overrides)
    model = getattr(transformers, model_cls_name)(config_cls(**kw)).eval()
    with torch.no_grad():  # random, non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.2)
    return model


def _reference_last_logits(model, seqs):
    dev = next(model.parameters()).device
    with torch.inference_mode():
        return torch.stack([model(input_ids=torch.tensor([s], device=dev)).logits[0, -1] for s in seqs])


def _check_against_transformers(model, prefix, suffixes, steps=3, atol=1e-4, pack=None):
    """Prefill (shared prefix + packed suffixes), then greedy decode steps, dropping and reordering rows
    on the way: every logit row equals the transformers forward over the same full sequence."""
    fast = FastLlama(model, pack=pack)
    with torch.inference_mode():
        cache = fast.prefix_cache(prefix) if prefix else None
        logits, cache = fast.prefill(suffixes, cache, extra=1)  # extra=1: forces the cache to grow
        seqs = [prefix + s for s in suffixes]
        scale = logits.abs().max()
        assert torch.allclose(logits, _reference_last_logits(model, seqs), atol=atol * scale, rtol=0)
        for step in range(steps):
            nxt = logits.argmax(-1)
            seqs = [s + [int(t)] for s, t in zip(seqs, nxt)]
            if step == 1:  # keep the last row and the first, in that order
                keep = torch.tensor([len(seqs) - 1, 0])
                cache = cache.reshaped(keep, cache.k.shape[3])
                seqs, nxt = [seqs[-1], seqs[0]], nxt[keep]
            if step == 2:  # drop the first row: increasing rows are compacted in place
                cache = cache.reshaped(torch.tensor([1]), cache.k.shape[3])
                seqs, nxt = seqs[1:], nxt[1:]
            cache = cache.ensure_room()
            logits = fast.decode(nxt, cache)
            assert torch.allclose(logits, _reference_last_logits(model, seqs), atol=atol * scale, rtol=0)
    return cache


def test_matches_transformers_on_the_embedded_model(small_llm):
    model, tok = small_llm
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 40000, (7,), generator=g).tolist()
    suffixes = [torch.randint(0, 40000, (n,), generator=g).tolist() for n in (5, 9, 3)]
    cache = _check_against_transformers(model, prefix, suffixes)
    assert cache.prefix_len == 7 and cache.rows == 1 and cache.lengths.tolist() == [5 + 3]


@pytest.mark.parametrize("overrides", [
    dict(),  # grouped-query attention, tied nothing
    dict(attention_bias=True, num_key_value_heads=4, tie_word_embeddings=True),
    dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
])
def test_matches_transformers_on_llama_variants(overrides):
    model = _tiny(**overrides)
    _check_against_transformers(model, [5, 6, 7, 8], [[9, 10, 11], [12], [13, 14, 15, 16, 17]], steps=4)
    _check_against_transformers(_tiny(**overrides), [], [[1, 2, 3], [4, 5]], steps=2)  # no shared prefix


@pytest.mark.parametrize("rows", [1, 2, 12, 30, 160, 400])
@pytest.mark.parametrize("bias", [False, True])
def test_every_cpu_kernel_of_linear_computes_the_same_product(rows, bias):
    """Linear picks weight-major GEMM or oneDNN-packed weights by the number of rows: every kernel computes
    x w^T + b within the float32 error bound of a 64-term dot product, whatever order or FMA it sums in
    (|error| <= 64 eps (|x| |w|^T + |b|)): a bound that holds on any CPU, unlike a fixed atol."""
    g = torch.Generator().manual_seed(rows)
    w, x = torch.randn(96, 64, generator=g), torch.randn(rows, 64, generator=g)
    b = torch.randn(96, generator=g) if bias else None
    exact = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    bound = 65 * torch.finfo(torch.float32).eps * (x.abs().double() @ w.abs().double().T
                                                   + (0 if b is None else b.abs().double()))
    for pack in (False, True):
        lin = Linear(w, b, pack=pack)
        assert (lin.packed is not None) == (pack and torch.backends.mkldnn.is_available())
        y = lin(x)
        assert y.shape == (rows, 96) and y.is_contiguous()
        assert ((y.double() - exact).abs() <= bound).all()


def test_decoding_many_rows_with_packed_weights_matches_transformers():
    """14 rows: prefill and the first decode step run through the oneDNN-packed projections, the last
    rows through weight-major GEMM."""
    assert Linear.PACKED_MIN_ROWS <= 14
    g = torch.Generator().manual_seed(1)
    suffixes = [torch.randint(0, 300, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (14,), generator=g)]
    _check_against_transformers(_tiny(), [5, 6, 7], suffixes, steps=3, pack=True)


def test_fused_weights_are_views_so_the_model_is_unchanged():
    model = _tiny()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        fast = FastLlama(model)
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    attn = model.model.layers[0].self_attn
    fused = fast.layers[0]["qkv"].weight
    assert attn.k_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()


def test_unsupported_models_fall_back_or_are_refused():
    mistral = _tiny("MistralForCausalLM")
    assert "model_type='mistral'" in unsupported_reason(mistral)
    assert Generator._fast_model(mistral, "auto") is None
    with pytest.raises(UserError, match="generation.engine=fast cannot run this model: model_type='mistral'"):
        Generator._fast_model(mistral, "fast")
    assert unsupported_reason(_tiny()) is None


def test_cache_grows_and_compacts_without_losing_tokens():
    model = _tiny()
    fast = FastLlama(model)
    with torch.inference_mode():
        _, cache = fast.prefill([[1, 2, 3], [4, 5]], None, extra=0)
        assert cache.k.shape[3] == 3 and cache.lengths.tolist() == [3, 2]
        grown = cache.ensure_room()
        assert grown.k.shape[3] == 3 + KVCache.GROW
        assert torch.equal(grown.k[..., :3, :], cache.k)
        assert grown.k[..., 3:, :].abs().sum() == 0  # unwritten slots are zero, never stale memory
        picked = grown.reshaped(torch.tensor([1, 1]), 8)
        assert picked.lengths.tolist() == [2, 2] and torch.equal(picked.k[:, 0, :, :2], cache.k[:, 1, :, :2])


def _prompts(tok, n):
    kb = load_kb()
    return PromptBuilder(tok, PAPER_TEMPLATE, "The prettiest flower is")([kb.answers[i][0] for i in range(n)])


@pytest.mark.parametrize("temperature", [0.0, 0.75])
def test_fast_and_transformers_engines_give_the_same_answers(small_llm, temperature):
    model, tok = small_llm
    prompts = _prompts(tok, 6)
    prompts.insert(3, prompts[1])  # a duplicate prompt
    keys = rng.mix(9, torch.arange(len(prompts)))
    answers = {}
    for engine in ("fast", "hf"):
        gen = Generator(model, tok, SamplingConfig(temperature=temperature, max_new_tokens=30, engine=engine))
        assert (gen.fast is not None) == (engine == "fast")
        answers[engine] = gen(prompts, keys)
    assert answers["fast"] == answers["hf"]
    # past the first cache chunk (32 tokens), without sentence stops
    lists = PromptBuilder(tok, "Name fifty flowers, one per line. {context}", "1.")(["Roses first."] * 2)
    long = {e: Generator(model, tok, SamplingConfig(temperature=0.0, max_new_tokens=45, stop_at_sentence_end=False,
                                                    engine=e))(lists, keys[:2]) for e in ("fast", "hf")}
    assert long["fast"] == long["hf"] and max(len(a) for a in long["fast"]) > KVCache.GROW


def _decode_twice(fast, make_decode, seqs, steps=5):
    """Greedy decode from a prefill with `make_decode(cache)` -> list of logits per step."""
    with torch.inference_mode():
        logits, cache = fast.prefill(seqs, fast.prefix_cache([7, 8, 9]), extra=KVCache.GROW)
        decode, out = make_decode(), []
        for _ in range(steps):
            cache = cache.ensure_room()
            logits = decode(logits.argmax(-1), cache).clone()
            out.append(logits)
    return out


def refill_scenario(model, fast, graphed=None, capacity=None, atol=1e-4):
    """Continuous batching (tensorsim.lm.slots) on the model's device: prompts prefilled into freed slots
    of a live cache (over the longer stale keys of the rows that left, one prompt copied to two slots)
    and decoded next to a row mid-answer, then compacted, give the transformers logits at every step.
    A 30-token row decoded past 32 tokens makes the cache grow (capacity None) or its span grow
    (fixed capacity). -> the SlotCache at the end."""
    from tensorsim.lm.slots import SlotCache

    g = torch.Generator().manual_seed(1)
    prefix = [5, 6, 7]

    def tokens(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    def check(logits, active, seqs):
        ref = _reference_last_logits(model, [seqs[s] for s in active])
        assert torch.allclose(logits.float(), ref.float(), atol=atol * ref.abs().max(), rtol=0)

    def step(batch, active, logits, seqs):
        nxt = logits.argmax(-1)
        for s, t in zip(active, nxt.tolist()):
            seqs[s] = seqs[s] + [t]
        logits = batch.decode(active, nxt)
        check(logits, active, seqs)
        return logits

    with torch.inference_mode():
        batch = SlotCache(fast, 3, fast.prefix_cache(prefix), graphed, capacity)
        first = [tokens(9), tokens(4), tokens(30)]
        active, logits = batch.admit(first, [0, 1, 2])
        seqs = {s: prefix + x for s, x in zip(active, first)}
        check(logits, active, seqs)
        for _ in range(4):  # the 30-token row reaches 34: past the first chunk of 32
            logits = step(batch, active, logits, seqs)
        batch.release([active[0], active[2]])  # the longest rows leave; slot 1 is mid-answer
        assert batch.free == [0, 2]
        new = tokens(3)
        slots, new_logits = batch.admit([new], [0, 0])  # one prompt asked twice: prefilled once
        assert slots == [0, 2] and torch.equal(new_logits[0], new_logits[1])
        seqs.update({0: prefix + new, 2: prefix + new})
        active, logits = [active[1]] + slots, torch.cat([logits[[1]], new_logits])  # slots 1, 0, 2
        check(logits, active, seqs)
        for _ in range(2):
            logits = step(batch, active, logits, seqs)
        batch.release([active[0]])  # slot 1 leaves; nothing waits: compact to 2 rows
        remaining = active[1:]
        active = batch.compact(remaining)
        assert batch.cache.rows == 2 and sorted(active) == [0, 1]
        seqs = {a: seqs[r] for a, r in zip(active, remaining)}
        step(batch, active, logits[1:], seqs)
    assert batch.cache.host_lengths.tolist() == batch.cache.lengths.tolist()  # the host mirror kept up
    return batch


@pytest.mark.parametrize("capacity", [None, 64])
def test_refilled_slots_decode_like_fresh_rows(capacity):
    model = _tiny()
    batch = refill_scenario(model, FastLlama(model), capacity=capacity)
    assert batch.cache.k.shape[3] == 64  # grown to two chunks, or allocated so at once


def _eager_record(spans):
    """GraphedDecode._record without CUDA: the "graph" replays decode_pass eagerly into its static
    logits, so the capture policy around it (which cache, which span, when) runs on the CPU."""

    def record(self, cache, span):
        spans.append(span)
        logits = self.fast.decode_pass(self.tokens, cache, None, span)  # the warm-up
        cache.lengths -= 1  # restored, as after the real warm-up

        class Replay:
            def replay(_):
                logits.copy_(self.fast.decode_pass(self.tokens, cache, None, span))

        return Replay(), logits

    return record


@pytest.mark.parametrize("capacity", [None, 64])
def test_graphs_are_captured_once_per_span_and_cache(capacity, monkeypatch):
    """The span never shrinks within a cache: the longest row leaving and admissions capture nothing;
    a span past 32 positions, a grown cache and a compacted cache each capture once."""
    spans = []
    monkeypatch.setattr(GraphedDecode, "_record", _eager_record(spans))
    model = _tiny()
    fast = FastLlama(model)
    graphed = GraphedDecode(fast)
    refill_scenario(model, fast, graphed, capacity)
    # 32; then 64 (fixed: the span grows in the same cache; else: the cache grew); then the compacted
    # cache, whose rows need 32 positions. Nothing while the longest row left and two rows came in.
    assert spans == [32, 64, 32]
    assert graphed.captures == 3 and fast.graph_error is None


def test_a_fixed_attention_span_gives_the_same_logits():
    """CUDA graphs need static shapes: decode over a fixed span of cache positions (masked past each
    row's length) must equal decode over just the used positions."""
    fast = FastLlama(_tiny())
    seqs = [[1, 2, 3, 4], [5, 6], [10, 11, 12, 13, 14, 15]]
    dynamic = _decode_twice(fast, lambda: fast.decode, seqs)
    fixed = _decode_twice(fast, lambda: (lambda tok, cache: fast.decode(tok, cache, span=cache.k.shape[3])), seqs)
    for a, b in zip(dynamic, fixed):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_matches_eager():
    fast = FastLlama(_tiny().cuda())
    seqs = [[1, 2, 3, 4], [5, 6], [10, 11, 12, 13, 14, 15]]
    eager = _decode_twice(fast, lambda: fast.decode, seqs, steps=40)  # crosses a span boundary (32)
    graphed = _decode_twice(fast, lambda: GraphedDecode(fast), seqs, steps=40)
    for a, b in zip(eager, graphed):
        assert torch.allclose(a, b, atol=1e-4)


def test_a_failed_graph_capture_falls_back_to_eager_decoding(monkeypatch, capsys):
    fast = FastLlama(_tiny())
    seqs = [[1, 2, 3, 4], [5, 6]]

    def fails(self, cache, span):
        fast.decode_pass(torch.zeros(cache.rows, dtype=torch.long), cache, None, span)  # advances lengths, as a warm-up
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(GraphedDecode, "_capture", fails)
    eager = _decode_twice(fast, lambda: fast.decode, seqs)
    fallback = _decode_twice(fast, lambda: GraphedDecode(fast), seqs)
    for a, b in zip(eager, fallback):
        assert torch.allclose(a, b, atol=1e-5)
    assert fast.graph_error == "operation not permitted when stream is capturing"
    assert capsys.readouterr().out.count("CUDA graph capture failed") == 1  # said once, then eager


def test_out_of_memory_in_a_graph_capture_reaches_the_halving_retry(monkeypatch):
    """torch.OutOfMemoryError is a RuntimeError: it must not be taken for an op that cannot be captured
    (which turns graphs off for the rest of the run) but reach Generator's halve-and-retry, with the
    cache as it was before the warm-up."""
    fast = FastLlama(_tiny())

    def out_of_memory(self, cache, span):
        fast.decode_pass(self.tokens, cache, None, span)  # the warm-up ran, advancing the lengths
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(GraphedDecode, "_record", out_of_memory)
    graphed = GraphedDecode(fast)
    with torch.inference_mode():
        logits, cache = fast.prefill([[1, 2, 3], [4, 5]], None, extra=4)
        with pytest.raises(torch.OutOfMemoryError):
            graphed(logits.argmax(-1), cache)
    assert fast.graph_error is None and graphed.graph is None
    assert cache.lengths.tolist() == cache.host_lengths.tolist() == [3, 2]
