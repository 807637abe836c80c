"""The answer protocol: which answers are accepted, and the regeneration of the rest.

The paper regenerates an answer that lacks the required phrase ("The prettiest flower"). tensorsim adds
an optional label rule (`prompt.require_label`), a deviation from the paper for small models: an answer
that names no label of the knowledge base (`any`), or none of the labels its context names
(`context`), is regenerated like one that lacks the phrase, within the same retry budget. For a model
that always names its context's flower, as LLaMA-2-7B-Chat did in every published answer, the rule
never fires. After the last try an answer stands, whatever it says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core.labels import UNLABELED, NameLabeler

LABEL_RULES = ("off", "any", "context")


def label_rule(value) -> str:
    """Config value -> one of LABEL_RULES (true means any, false means off)."""
    if value is True:
        return "any"
    if value is False or value is None:
        return "off"
    return value


@dataclass
class AnswerRules:
    required_phrase: str | None  # answers without it (case-insensitive) are regenerated
    require_label: str  # off | any | context
    max_retries: int  # extra tries after the first


@dataclass
class ProtocolCounts:
    """Per row: regenerations by reason, and the accepted answer's label by name."""
    phrase_retries: torch.Tensor  # [N] int64, tries redone because the phrase was missing
    label_retries: torch.Tensor  # [N] int64, tries redone because the label rule failed (phrase present)
    labels: torch.Tensor  # [N] int64, the label the accepted answer names first (-1: none)
    generations: int  # rows generated, retries included

    @property
    def unlabeled(self) -> torch.Tensor:  # [N] bool
        return self.labels == UNLABELED


class AnswerChecker:
    """Decides which answers break the protocol. Labels come from names, whatever labeler the run uses."""

    def __init__(self, rules: AnswerRules, names: NameLabeler):
        self.rules, self.names = rules, names

    def context_labels(self, contexts: list[str]) -> list[set[int]]:
        """Labels each context names (every name in it, not just the earliest)."""
        return [self.names.all_labels(c) for c in contexts]

    def lacks_phrase(self, answer: str) -> bool:
        phrase = self.rules.required_phrase
        return bool(phrase) and phrase.lower() not in answer.lower()

    def lacks_label(self, label: int, context_labels: set[int]) -> bool:
        rule = self.rules.require_label
        if rule == "off":
            return False
        if label == UNLABELED:
            return True
        # a context that names no label (an earlier answer that stood after its last try) asks for any
        return rule == "context" and bool(context_labels) and label not in context_labels


def generate_answers(generate: Callable[[list[int], int], list[str]], contexts: list[str],
                     checker: AnswerChecker) -> tuple[list[str], ProtocolCounts]:
    """Answer every context, regenerating rows that break the rules, only those rows.

    generate(rows, attempt) -> answers of those rows; it draws attempt's own random keys, so a retried
    row gets fresh randomness and the answers of rows that passed never change.
    """
    N = len(contexts)
    responses: list[str] = [""] * N
    phrase_retries = torch.zeros(N, dtype=torch.int64)
    label_retries = torch.zeros(N, dtype=torch.int64)
    labels = torch.full((N,), UNLABELED, dtype=torch.int64)
    wanted = checker.context_labels(contexts) if checker.rules.require_label == "context" else [set()] * N
    todo, generations = list(range(N)), 0
    for attempt in range(1 + checker.rules.max_retries):
        answers = generate(todo, attempt)
        generations += len(todo)
        last = attempt == checker.rules.max_retries
        still = []
        for r, answer in zip(todo, answers):
            responses[r] = answer
            label = labels[r] = checker.names.label_one(answer)
            if last:
                continue
            if checker.lacks_phrase(answer):
                phrase_retries[r] += 1
                still.append(r)
            elif checker.lacks_label(label, wanted[r]):
                label_retries[r] += 1
                still.append(r)
        todo = still
        if not todo:
            break
    return responses, ProtocolCounts(phrase_retries, label_retries, labels, generations)
