"""Stacked per-agent LoRA adapters (tensorsim/lm/lora.py) against peft, on a tiny random LLaMA in float32."""
import copy

import pytest
import torch

from tensorsim.lm.lora import Adam, StackedLoRA, train_step

TARGETS = ["q_proj", "v_proj", "down_proj"]


def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                         max_position_embeddings=128, pad_token_id=0, eos_token_id=1))
    model.requires_grad_(False)
    return model.eval()


def stacked(model, R, rank=4, alpha=8.0, targets=TARGETS, seed=1):
    """Adapters with random, distinct A and B per agent (B = 0 would hide half of the update)."""
    lora = StackedLoRA(model.config, R, rank, alpha, targets, torch.device("cpu"), seed=seed)
    g = torch.Generator().manual_seed(seed)
    for k, p in lora.params.items():
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return lora


def peft_copy(model, lora: StackedLoRA, agent: int):
    """A peft model holding agent `agent`'s adapter of `lora`."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=lora.rank, lora_alpha=lora.alpha,
                                                          target_modules=lora.targets, lora_dropout=0.0))
    with torch.no_grad():
        for i, layer in enumerate(pm.base_model.model.model.layers):
            for proj in lora.targets:
                mod = getattr(getattr(layer, "self_attn" if "proj" in proj and proj[0] in "qkvo" else "mlp"), proj)
                mod.lora_A["default"].weight.copy_(lora.params[f"layers.{i}.{proj}.A"][agent])
                mod.lora_B["default"].weight.copy_(lora.params[f"layers.{i}.{proj}.B"][agent])
    return pm


def peft_weights(pm, lora: StackedLoRA) -> dict[str, torch.Tensor]:
    out = {}
    for i, layer in enumerate(pm.base_model.model.model.layers):
        for proj in lora.targets:
            mod = getattr(getattr(layer, "self_attn" if proj[0] in "qkvo" else "mlp"), proj)
            out[f"layers.{i}.{proj}.A"] = mod.lora_A["default"].weight.detach()
            out[f"layers.{i}.{proj}.B"] = mod.lora_B["default"].weight.detach()
    return out


def examples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, 64, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    answers = [torch.randint(2, 64, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    return prompts, answers


def peft_loss(pm, prompt, answer):
    ids = torch.tensor([prompt + answer])
    logits = pm(input_ids=ids).logits[0, len(prompt) - 1:-1].float()  # positions predicting the answer
    return torch.nn.functional.cross_entropy(logits, torch.tensor(answer))


@pytest.mark.parametrize("micro_rows", [None, 2])
def test_one_batched_step_equals_n_separate_peft_steps(micro_rows):
    model = tiny()
    n, lr, steps = 5, 1e-2, 2
    lora = stacked(model, n)
    start = {k: p.clone() for k, p in lora.params.items()}
    prompts, answers = examples(n)
    opt = Adam(lora.params, lr)
    batched_losses = [train_step(model, lora, opt, prompts, answers, torch.arange(n), pad_id=0, micro_rows=micro_rows)
                      for _ in range(steps)]
    for i in range(n):
        ref = copy.deepcopy(lora)
        ref.params = {k: p.clone() for k, p in start.items()}
        pm = peft_copy(model, ref, i)
        peft_opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=lr)
        for s in range(steps):
            peft_opt.zero_grad()
            loss = peft_loss(pm, prompts[i], answers[i])
            loss.backward()
            peft_opt.step()
            assert batched_losses[s][i].item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
        for k, w in peft_weights(pm, lora).items():
            torch.testing.assert_close(lora.params[k][i], w, rtol=1e-5, atol=1e-6)
            if k.endswith(".B"):
                assert not torch.equal(lora.params[k][i], start[k][i])  # the step moved it
    assert opt.steps == steps


def test_rows_never_leak_into_each_other():
    model = tiny()
    n = 4
    prompts, answers = examples(n)
    after = []
    for variant in range(2):
        lora = stacked(model, n)
        p, a = list(prompts), list(answers)
        if variant:  # agent 2 reads something else, twice as long
            p[2], a[2] = [5, 6, 7] * 4, [9, 10, 11, 12, 13] * 2
        train_step(model, lora, Adam(lora.params, 1e-2), p, a, torch.arange(n), pad_id=0)
        after.append(lora.params)
    for k in after[0]:
        for i in (0, 1, 3):
            torch.testing.assert_close(after[0][k][i], after[1][k][i], rtol=0, atol=1e-7)
        if k.endswith(".B"):
            assert not torch.allclose(after[0][k][2], after[1][k][2])


def test_fast_engine_logits_match_peft_for_every_agent_in_one_batch():
    from tensorsim.lm.llama import FastLlama

    model = tiny()
    n = 3
    lora = stacked(model, n, targets=["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"])
    fast = FastLlama(model, pack=False)
    fast.adapters = lora
    seqs = [[3, 4, 5, 6], [7, 8], [9, 10, 11]]
    agents = torch.tensor([2, 0, 1])
    logits, cache = fast.prefill(seqs, extra=2, agents=agents)
    nxt = torch.tensor([12, 13, 14])
    step = fast.decode(nxt, cache)
    for j, (s, a) in enumerate(zip(seqs, agents.tolist())):
        pm = peft_copy(model, lora, a)
        with torch.no_grad():
            ref = pm(input_ids=torch.tensor([s + [nxt[j].item()]])).logits[0]
        torch.testing.assert_close(logits[j], ref[-2], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(step[j], ref[-1], rtol=1e-4, atol=1e-5)


def test_hooks_on_the_transformers_model_match_peft():
    model = tiny()
    lora = stacked(model, 2)
    lora.install(model)
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with lora.rows_of(torch.tensor([1, 0])):
            ours = model(input_ids=ids).logits
        for j, a in enumerate([1, 0]):
            pm = peft_copy(tiny(), lora, a)
            torch.testing.assert_close(ours[j], pm(input_ids=ids[j:j + 1]).logits[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, ours)


def test_drift_measures_match_explicit_products():
    from tensorsim.lm.lora import adapter_gram, cosine_distances, mean_off_diagonal, update_norms

    model = tiny()
    n = 3
    lora = stacked(model, 2 * n)  # two populations of 3
    new = {k: p + 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) for k, p in lora.params.items()}
    keys = lora.keys()

    def flat(params):  # [R, sum d_out d_in]: B A of every projection, flattened
        return torch.cat([torch.bmm(params[f"{k}.B"], params[f"{k}.A"]).flatten(1) for k in keys], 1).double()

    torch.testing.assert_close(update_norms(lora.params, new, keys), (flat(new) - flat(lora.params)).norm(dim=1))
    f = flat(new).reshape(2, n, -1)
    cos = torch.nn.functional.cosine_similarity(f[:, :, None], f[:, None, :], dim=-1)
    d = cosine_distances(adapter_gram(new, keys, n))
    torch.testing.assert_close(d, 1 - cos)
    assert d.diagonal(dim1=1, dim2=2).abs().max() < 1e-9
    torch.testing.assert_close(mean_off_diagonal(d)[0, 0], (d[0, 0, 1] + d[0, 0, 2]) / 2)
    zero = {k: torch.zeros_like(p) for k, p in new.items()}  # B = 0: identical (base) adapters, distance 0
    assert cosine_distances(adapter_gram(zero, keys, n)).abs().max() == 0


def test_training_rows_fit_the_budget():
    from tensorsim.lm.lora import training_bytes_per_token, training_rows

    c = tiny().config
    per_row = training_bytes_per_token(c, torch.float32) * 100
    assert training_rows(c, torch.float32, 100, None, 30) == 30
    assert training_rows(c, torch.float32, 100, 10 * per_row / 2**30, 30) == 10
    assert training_rows(c, torch.float32, 100, 1e-12, 30) == 1


@pytest.fixture(scope="module")
def tiny_pair(tiny_models):
    from transformers import AutoTokenizer

    llm_dir = tiny_models[0]
    return llm_dir, AutoTokenizer.from_pretrained(llm_dir)


def load_base(llm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval().requires_grad_(False)


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_generation_with_adapters_equals_peft_generate(tiny_pair, engine):
    from tensorsim.lm.generate import Generator, SamplingConfig

    llm_dir, tok = tiny_pair
    model = load_base(llm_dir)
    lora = stacked(model, 3, targets=["q_proj", "v_proj", "gate_proj"])
    for k, p in lora.params.items():
        p.mul_(20)  # large updates, so every adapter writes something different
    gen = Generator(model, tok, SamplingConfig(temperature=0, max_new_tokens=12, stop_at_sentence_end=False,
                                               engine=engine, max_rows=3 if engine == "fast" else 256))
    gen.use_adapters(lora)
    prompts = [tok("The prettiest flower is")["input_ids"]] * 3 + [tok("A rose")["input_ids"]]
    agents = torch.tensor([0, 1, 2, 1])  # one prompt through three adapters: never merged by dedup
    out = gen(prompts, torch.zeros(4, dtype=torch.long), agents)
    for j, a in enumerate(agents.tolist()):
        pm = peft_copy(load_base(llm_dir), lora, a)
        ref = pm.generate(input_ids=torch.tensor([prompts[j]]), max_new_tokens=12, do_sample=False,
                          pad_token_id=tok.pad_token_id)[0, len(prompts[j]):].tolist()
        if tok.eos_token_id in ref:  # peft's output ends at EOS, then pads; ours leaves EOS out
            ref = ref[:ref.index(tok.eos_token_id)]
        assert out[j] == ref, (j, a)
    assert len({tuple(o) for o in out[:3]}) > 1  # the adapters changed the answers


def test_exported_adapter_loads_in_peft_with_the_same_logits(tiny_pair, tmp_path):
    from peft import PeftModel

    from tensorsim.lm.lora import save_peft_adapter

    llm_dir, _ = tiny_pair
    model = load_base(llm_dir)
    lora = stacked(model, 4, targets=["k_proj", "o_proj", "up_proj"])
    lora.install(model)
    save_peft_adapter(tmp_path / "a3", lora.params, 3, lora.rank, lora.alpha, lora.targets, str(llm_dir))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), lora.rows_of(torch.tensor([3])):
        ours = model(input_ids=ids).logits
    pm = PeftModel.from_pretrained(load_base(llm_dir), tmp_path / "a3")
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)


def test_each_agent_trains_on_the_answer_it_received(tiny_models, monkeypatch):
    """Mirrored agents train on their own answer, the others on their partner's, after their own prompt;
    with agents.context=false the contexts stay as they were."""
    import tiny_models as tm
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    import tensorsim.agents.lora as lora_kind
    from tensorsim.core.populations import build_populations

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trial=smoke", "agents=lora", "dtype=float32",
                                                        "trial.replicas=2", *tm.overrides(tiny_models)])
    pops = build_populations(cfg.trial.k, cfg.trial.p, cfg.trial.replicas, cfg.seed)
    agents, _, used = lora_kind.build(cfg, pops, torch.device("cpu"), torch.float32)
    assert used["agents"] == "lora" and used["adapter_memory_bytes"] > 0
    seen = []
    real = lora_kind.train_step

    def spy(model, lora, opt, prompts, answers, agent, pad_id, micro_rows=None):
        seen.append((prompts, answers, agent.clone()))
        return real(model, lora, opt, prompts, answers, agent, pad_id, micro_rows)

    monkeypatch.setattr(lora_kind, "train_step", spy)
    before = agents.contexts()
    rec = agents.step(0)
    (prompts, answers, agent), = seen  # train_steps=1: one call, all B*n rows
    B, n = 2, cfg.trial.n
    assert agent.tolist() == list(range(B * n))
    assert prompts == agents.prompts(rec.contexts)
    src = rec.partner
    assert bool((src[rec.mirrored] == torch.arange(n).expand(B, n)[rec.mirrored]).all())
    prefix = cfg.prompt.answer_prefix
    for b in range(B):
        for i in range(n):
            text = rec.responses[b * n + int(src[b, i])]
            want = agents.tokenizer(text[len(prefix):], add_special_tokens=False)["input_ids"]
            assert answers[b * n + i] == want
    assert agents.contexts() == before  # context=false: only the weights learn
    assert agents.train_rows(prompts, answers) == B * n  # all rows in one pass: within max_rows and no budget
    cfg.generation.max_rows = 5
    assert agents.train_rows(prompts, answers) == 5
    assert set(rec.extra["drift"]) == {"loss", "update_norm", "adapter_distance", "answer_distance"}
    assert rec.extra["drift"]["update_norm"].shape == (B, n) and bool((rec.extra["drift"]["update_norm"] > 0).all())
