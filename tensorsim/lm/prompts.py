"""Turning contexts into prompt token ids through the model's chat template."""
from __future__ import annotations

PAPER_TEMPLATE = ('Based on the context, describe the prettiest flower in a single sentence that starts with '
                  '"The prettiest flower is"\nCONTEXT: {context}\nANSWER:')


class PromptBuilder:
    """context text -> prompt token ids, memoised (contexts repeat once a population converges)."""

    def __init__(self, tokenizer, template: str, answer_prefix: str = "", use_chat_template: bool = True,
                 system_prompt: str | None = None):
        self.tokenizer, self.template, self.answer_prefix = tokenizer, template, answer_prefix
        self.use_chat_template = use_chat_template and tokenizer.chat_template is not None
        self.system_prompt = system_prompt
        self._cache: dict[str, list[int]] = {}

    def text(self, context: str) -> str:
        user = self.template.format(context=context)
        if not self.use_chat_template:
            return user + (" " + self.answer_prefix if self.answer_prefix else "")
        if self.system_prompt == "":
            chat = self._without_system_turn(user)
        else:
            messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
            messages.append({"role": "user", "content": user})
            chat = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the answer prefix pre-fills the assistant turn, so the model continues the sentence
        return chat + self.answer_prefix

    def _without_system_turn(self, user: str) -> str:
        """The chat text with no system turn at all, also where the template inserts a default one
        (SmolLM2's does): render a marker system turn, then cut that turn out."""
        render = self.tokenizer.apply_chat_template
        marker = "tensorsim-system-marker"
        system_only = render([{"role": "system", "content": marker}], tokenize=False)
        full = render([{"role": "system", "content": marker}, {"role": "user", "content": user}], tokenize=False,
                      add_generation_prompt=True)
        plain = render([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        if not full.startswith(system_only):  # the system text sits inside the user turn (LLaMA-2's <<SYS>>)
            return plain
        rest = full[len(system_only):]
        bos = self.tokenizer.bos_token or ""
        # a template that opens with BOS before the system turn must still open with it
        return bos + rest if bos and plain.startswith(bos) and not rest.startswith(bos) else rest

    def __call__(self, contexts: list[str]) -> list[list[int]]:
        out = []
        for c in contexts:
            ids = self._cache.get(c)
            if ids is None:
                ids = self.tokenizer(self.text(c), add_special_tokens=False)["input_ids"]
                if len(self._cache) < 100_000:
                    self._cache[c] = ids
            out.append(ids)
        return out

    def response(self, new_ids: list[int]) -> str:
        """The agent's answer: the pre-filled prefix plus what the model wrote."""
        return (self.answer_prefix + self.tokenizer.decode(new_ids, skip_special_tokens=True)).strip()
