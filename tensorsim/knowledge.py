"""Knowledge bases: each agent's m (question, answer) entries, loaded from a JSON data file and validated.

File layout (see tensorsim/data/flowers.json):
  {"name": ..., "topic": "flower", "labels": [names...],
   "agents": [{"label": name, "entries": [{"topic", "question", "answer"}, ... m entries]}, ...]}
`topic` says which entry is the one under study (its answers carry the labels); `labels` lists every
name the labeler knows (at least every agent's label).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .errors import UserError

DEFAULT_KB = "flowers.json"


@dataclass(frozen=True)
class KnowledgeBase:
    name: str
    topic: str  # the topic under study, e.g. "flower"
    labels: list[str]  # every label name the labeler knows
    topics: list[str]  # [m] topic of each entry slot, same order for all agents
    questions: list[list[str]]  # [n][m]
    answers: list[list[str]]  # [n][m]
    agent_labels: list[int]  # [n] index into labels of each agent's starting answer

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def m(self) -> int:
        return len(self.topics)

    @property
    def topic_slot(self) -> int:
        return self.topics.index(self.topic)

    def take(self, n: int) -> "KnowledgeBase":
        """The first n agents; with n larger than the file, agents are repeated cyclically
        (agent i gets entry i mod n_file), so the starting labels repeat too."""
        rows = [i % self.n for i in range(n)]
        return KnowledgeBase(self.name, self.topic, self.labels, self.topics,
                             [self.questions[i] for i in rows], [self.answers[i] for i in rows],
                             [self.agent_labels[i] for i in rows])


def default_kb_path() -> Path:
    return Path(str(resources.files("tensorsim.data").joinpath(DEFAULT_KB)))


def load_kb(path: str | Path | None = None) -> KnowledgeBase:
    """Load and validate a knowledge-base file; any defect is a one-line UserError naming it."""
    path = Path(path) if path else default_kb_path()
    packaged = default_kb_path().parent / path.name
    if not path.is_file() and path.name == str(path) and packaged.is_file():
        path = packaged  # a bare name not found here: one of the packaged knowledge bases (cities.json)
    where = f"kb={path}"
    if not path.is_file():
        raise UserError(f"{where}: file not found (expected a JSON knowledge base)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None

    def need(cond, msg):
        if not cond:
            raise UserError(f"{where}: {msg}")

    need(isinstance(data, dict), "top level must be an object with 'topic', 'labels' and 'agents'")
    topic, labels, agents = data.get("topic"), data.get("labels"), data.get("agents")
    need(isinstance(topic, str) and topic.strip(), "'topic' must be a non-empty string")
    need(isinstance(labels, list) and labels and all(isinstance(s, str) and s.strip() for s in labels),
         "'labels' must be a non-empty list of non-empty strings")
    need(len({s.lower() for s in labels}) == len(labels), "'labels' has duplicate names")
    need(isinstance(agents, list) and len(agents) >= 2, f"'agents' must list at least 2 agents, got {len(agents) if isinstance(agents, list) else type(agents).__name__}")
    lower_labels = [s.lower() for s in labels]
    topics = None
    questions, answers, agent_labels = [], [], []
    for i, agent in enumerate(agents):
        need(isinstance(agent, dict) and isinstance(agent.get("entries"), list) and agent["entries"],
             f"agents[{i}] needs a non-empty 'entries' list")
        entries = agent["entries"]
        for j, e in enumerate(entries):
            for key in ("topic", "question", "answer"):
                need(isinstance(e, dict) and isinstance(e.get(key), str) and e[key].strip(),
                     f"agents[{i}].entries[{j}].{key} must be a non-empty string")
        these = [e["topic"] for e in entries]
        if topics is None:
            topics = these
            need(topic in topics, f"no entry has the topic under study {topic!r} (topics: {', '.join(topics)})")
            need(len(set(topics)) == len(topics), f"agents[0] has a repeated topic in {topics}")
        need(these == topics, f"agents[{i}] has topics {these}, expected {topics} like agents[0]")
        label = agent.get("label")
        need(isinstance(label, str) and label.lower() in lower_labels,
             f"agents[{i}].label={label!r} is not one of 'labels'")
        questions.append([e["question"] for e in entries])
        answers.append([e["answer"] for e in entries])
        agent_labels.append(lower_labels.index(label.lower()))
    return KnowledgeBase(str(data.get("name", path.stem)), topic, list(labels), topics, questions, answers,
                         agent_labels)


def retrieval_scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Dot product of every entry's key embedding with the query. query: [d], keys: [..., m, d] -> [..., m]"""
    return keys @ query


def retrieve(scores: torch.Tensor, top_r: int = 1) -> torch.Tensor:
    """Each agent's top-r entries (docs/SPEC.md §1, retrieval), ties to the lower slot. scores: [..., m] -> [..., r]"""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :top_r]
