"""The language-model engine: model and embedder loading, prompts, the fast LLaMA forward, the batched
generator with its slots, and the answer protocol. Imports core and errors only."""
