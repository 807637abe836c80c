"""The shipped example on another topic (tensorsim/data/cities.json + trial=cities) runs end to end."""
import csv
import json

import pytest
from conftest import run_cli

from tensorsim.knowledge import load_kb


def test_cities_kb_loads_by_its_packaged_name():
    kb = load_kb("cities.json")
    assert kb.topic == "city" and len(kb.labels) == 10 and kb.topics[0] == "city"
    assert [kb.labels[i] for i in kb.agent_labels] == kb.labels  # agent i holds city i
    assert all(a[0].startswith(f"{kb.labels[i]} - ") for i, a in enumerate(kb.answers))


@pytest.mark.slow
def test_cities_trial_runs_and_labels_cities(tmp_path):
    run = tmp_path / "cities"
    r = run_cli("trial=cities", "trial.steps=2", "trial.window=2", "prompt.require_label=context",
                "output.plots=false", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["models"]["knowledge_base"] == "cities-10"
    assert summary["config"]["prompt"]["require_label"] == "context"
    cities = set(load_kb("cities.json").labels)
    with open(run / "agents.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20
    assert {row["label_name"] for row in rows} <= cities | {"unlabeled"}
    t0 = [row["label_name"] for row in rows if row["t"] == "0"]
    assert len(set(t0) & cities) >= 3  # answers name cities, the labels of the new knowledge base
    with open(run / "transcript.jsonl") as f:
        answers = [json.loads(line) for line in f]
    assert all(a["response"].startswith("The best city to live in is") for a in answers)
    assert all(a["context"].split(" - ")[0] in cities for a in answers if a["t"] == 0)
    # the label rule ran with the new labels: its counters cover every answer, and what stayed unlabeled
    # after the retries is what the labeler found unlabeled
    protocol = summary["protocol"]
    assert protocol["answers"] == 20
    assert protocol["unlabeled_answers"] == sum(row["label"] == "-1" for row in rows)
    assert protocol["label_retries"] >= 0 and protocol["phrase_retries"] == 0
