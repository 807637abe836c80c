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
