"""A tiny random LLaMA and a tiny random BERT embedder, saved as local model directories, with a small
byte-level BPE tokenizer (chat template included) trained on the knowledge base's texts.

They load through the same code as real models (model.source=path, embedder.source=path), need no
download and no embedded package, and fit the GPU machine's carry limit, so the CUDA tests run a whole
LLMAgents step with them. Their answers are noise; the tests check devices, shapes and plumbing.
"""
from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tensorsim.knowledge import load_kb

    kb = load_kb()
    corpus = [t for row in kb.answers + kb.questions for t in row] + kb.labels
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   chat_template=CHAT_TEMPLATE)


def save_tiny_models(root: Path) -> tuple[Path, Path]:
    """-> (llm_dir, embedder_dir) under root, each with weights (safetensors) and the tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    llm_dir, emb_dir = root / "tiny-llama", root / "tiny-bert"
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tok), max_position_embeddings=512, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None))
    llm.save_pretrained(llm_dir)
    tok.save_pretrained(llm_dir)
    bert = BertModel(BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                vocab_size=len(tok), max_position_embeddings=512, pad_token_id=tok.pad_token_id))
    bert.save_pretrained(emb_dir)
    tok.save_pretrained(emb_dir)
    return llm_dir, emb_dir


def overrides(dirs: tuple[Path, Path]) -> list[str]:
    """Config overrides that select the tiny models (short answers: the checks are about plumbing)."""
    llm_dir, emb_dir = dirs
    return ["model.source=path", f"model.path={llm_dir}", "model.name=tiny-llama",
            "embedder.source=path", f"embedder.path={emb_dir}", "embedder.name=tiny-bert",
            "generation.max_new_tokens=8"]
