import json

import pytest
import torch

from tensorsim.core.labels import NameLabeler
from tensorsim.errors import UserError
from tensorsim.knowledge import load_kb, retrieval_scores, retrieve

SPEC_FLOWERS = ["Rose", "Orchid", "Tulip", "Lily", "Sunflower", "Cherry Blossom", "Lotus", "Peony", "Hydrangea",
                "Dahlia", "Magnolia", "Bird of Paradise", "Iris", "Gardenia", "Poppy", "Hyacinth", "Wisteria",
                "Daffodil", "Gerbera Daisy", "Calla Lily", "Daisy", "Chrysanthemum", "Lavender", "Carnation",
                "Marigold", "Hibiscus", "Bluebell", "Zinnia", "Anemone", "Azalea"]


def test_packaged_kb_matches_spec():
    kb = load_kb()
    assert kb.n == 30 and kb.m == 5
    assert kb.topics == ["flower", "movie", "us_state", "rock_band", "mathematician"]
    assert [kb.labels[i] for i in kb.agent_labels] == SPEC_FLOWERS
    labeler = NameLabeler(kb.labels)
    flower_answers = [row[kb.topic_slot] for row in kb.answers]
    # every agent starts out describing its own flower, "<Flower> - <sentence>"
    assert labeler(flower_answers).tolist() == list(range(30))
    assert all(a.startswith(f"{SPEC_FLOWERS[i]} - ") for i, a in enumerate(flower_answers))
    assert len({row[kb.topic_slot] for row in kb.questions}) > 1  # asked in several phrasings


def test_retrieval_picks_the_flower_entry_for_every_agent(embedder):
    kb = load_kb()
    q = embedder.queries(["Describe the prettiest flower in a single sentence."])[0]
    keys = embedder.documents([x for row in kb.questions for x in row]).reshape(kb.n, kb.m, -1)
    slots = retrieve(retrieval_scores(q, keys), top_r=2)
    assert slots.shape == (30, 2)
    assert (slots[:, 0] == kb.topic_slot).all()


def test_retrieve_ties_to_lower_slot():
    assert retrieve(torch.tensor([[0.5, 0.9, 0.9]]), 2).tolist() == [[1, 2]]


def test_take_repeats_agents_cyclically():
    kb = load_kb().take(65)
    assert kb.n == 65 and kb.agent_labels[30] == kb.agent_labels[0] and kb.agent_labels[64] == 4


def _write(tmp_path, data):
    p = tmp_path / "kb.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


GOOD_AGENT = {"label": "Rose", "entries": [{"topic": "flower", "question": "q?", "answer": "Rose - red."}]}


@pytest.mark.parametrize("data,fragment", [
    ("{not json", "not valid JSON"),
    ({"topic": "flower", "labels": ["Rose"], "agents": [GOOD_AGENT]}, "at least 2 agents"),
    ({"topic": "flower", "labels": ["Rose"], "agents": [GOOD_AGENT, {"label": "Rose", "entries": [
        {"topic": "flower", "question": "", "answer": "x"}]}]}, "agents[1].entries[0].question"),
    ({"topic": "flower", "labels": ["Rose"], "agents": [GOOD_AGENT, {"label": "Tulip", "entries": GOOD_AGENT["entries"]}]},
     "agents[1].label='Tulip'"),
    ({"topic": "movie", "labels": ["Rose"], "agents": [GOOD_AGENT, GOOD_AGENT]}, "topic under study 'movie'"),
    ({"topic": "flower", "labels": ["Rose"], "agents": [GOOD_AGENT, {"label": "Rose", "entries": [
        {"topic": "movie", "question": "q", "answer": "a"}]}]}, "agents[1] has topics"),
])
def test_malformed_kb_is_refused_with_the_defect_named(tmp_path, data, fragment):
    with pytest.raises(UserError) as e:
        load_kb(_write(tmp_path, data))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_other_population_file_loads(tmp_path):
    data = {"topic": "flower", "labels": ["Rose", "Tulip"], "agents": [
        GOOD_AGENT, {"label": "Tulip", "entries": [{"topic": "flower", "question": "q?", "answer": "Tulip - cup."}]}]}
    kb = load_kb(_write(tmp_path, data))
    assert kb.n == 2 and kb.m == 1 and kb.agent_labels == [0, 1]


def test_embedder_embeds_each_distinct_text_once_in_the_callers_order(embedder, monkeypatch):
    texts = ["The prettiest flower is the rose.", "A lily.", "The prettiest flower is the rose.",
             "The prettiest flower is the orchid, whose petals curl like silk ribbons.", "A lily."]
    alone = torch.cat([embedder([t]) for t in texts])  # one text per call: no batching effects
    seen = []
    real = embedder._embed
    monkeypatch.setattr(embedder, "_embed", lambda batch: seen.append(list(batch)) or real(batch))
    together = embedder(texts)
    assert sorted(t for b in seen for t in b) == sorted(set(texts))  # 3 distinct texts, each once
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.equal(together[0], together[2]) and torch.equal(together[1], together[4])
    assert torch.allclose(together.norm(dim=-1), torch.ones(5))
