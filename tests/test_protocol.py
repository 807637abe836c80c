"""The answer protocol: the paper's phrase rule and tensorsim's label rule (prompt.require_label)."""
import json

import pytest
import torch
from conftest import run_cli

from tensorsim.core.labels import NameLabeler
from tensorsim.lm.protocol import AnswerChecker, AnswerRules, generate_answers, label_rule

NAMES = NameLabeler(["Rose", "Tulip", "Lily", "Calla Lily"])
PHRASE = "The prettiest flower"


def scripted(script: dict[tuple[int, int], str], calls: list):
    """A generate(rows, attempt) that answers from a script and records which rows each try asked for."""
    def generate(rows, attempt):
        calls.append((attempt, list(rows)))
        return [script[(r, attempt)] for r in rows]
    return generate


def test_only_rows_breaking_a_rule_are_regenerated():
    contexts = ["The prettiest flower is the rose.", "The prettiest flower is the tulip.",
                "The prettiest flower is the lily.", "The prettiest flower is the rose."]
    script = {
        (0, 0): "The prettiest flower is the rose.",  # fine at once
        (1, 0): "The prettiest flower is a bright bloom.",  # no label -> retried
        (1, 1): "The prettiest flower is the tulip.",
        (2, 0): "A lily, clearly.",  # no phrase -> retried for the phrase
        (2, 1): "The prettiest flower is the lily.",
        (3, 0): "The prettiest flower is pretty.",  # never names one: stands after the last try
        (3, 1): "The prettiest flower is nice.",
        (3, 2): "The prettiest flower is lovely.",
    }
    calls = []
    checker = AnswerChecker(AnswerRules(PHRASE, "any", max_retries=2), NAMES)
    answers, counts = generate_answers(scripted(script, calls), contexts, checker)
    assert calls == [(0, [0, 1, 2, 3]), (1, [1, 2, 3]), (2, [3])]
    assert answers == [script[(0, 0)], script[(1, 1)], script[(2, 1)], script[(3, 2)]]
    assert counts.phrase_retries.tolist() == [0, 0, 1, 0]
    assert counts.label_retries.tolist() == [0, 1, 0, 2]
    assert counts.unlabeled.tolist() == [False, False, False, True]
    assert counts.generations == 4 + 3 + 1


def test_label_rule_off_is_the_papers_phrase_rule():
    calls = []
    script = {(0, 0): "The prettiest flower is a bright bloom.", (1, 0): "Roses.", (1, 1): "The prettiest flower: roses."}
    checker = AnswerChecker(AnswerRules(PHRASE, "off", max_retries=4), NAMES)
    answers, counts = generate_answers(scripted(script, calls), ["a", "b"], checker)
    assert calls == [(0, [0, 1]), (1, [1])]
    assert counts.label_retries.tolist() == [0, 0] and counts.phrase_retries.tolist() == [0, 1]
    assert counts.unlabeled.tolist() == [True, False]


def test_context_rule_wants_a_label_the_context_names():
    contexts = ["The prettiest flower is the rose, not the tulip.", "The prettiest flower is a bright bloom."]
    script = {(0, 0): "The prettiest flower is the lily.",  # names a label, but not one of its context's
              (0, 1): "The prettiest flower is the tulip.",  # any label its context names will do
              (1, 0): "The prettiest flower is the lily."}  # a context naming none asks for any label
    calls = []
    checker = AnswerChecker(AnswerRules(PHRASE, "context", max_retries=3), NAMES)
    answers, counts = generate_answers(scripted(script, calls), contexts, checker)
    assert calls == [(0, [0, 1]), (1, [0])]
    assert counts.label_retries.tolist() == [1, 0]
    # "calla lily" is one label, not a lily
    assert NAMES.all_labels("a Calla Lily and a rose") == {3, 0}


@pytest.mark.parametrize("value,rule", [(True, "any"), (False, "off"), (None, "off"), ("context", "context")])
def test_config_values_of_the_label_rule(value, rule):
    assert label_rule(value) == rule


def _run(tmp_path, name, *overrides):
    r = run_cli("trial=smoke", *overrides, f"hydra.run.dir={tmp_path / name}")
    assert r.returncode == 0, r.stderr[-3000:]
    d = tmp_path / name
    transcript = [json.loads(line) for line in open(d / "transcript.jsonl")]
    return json.loads((d / "summary.json").read_text()), transcript


@pytest.mark.slow
def test_label_rule_through_the_cli(tmp_path):
    """Rows that named a flower at once are untouched by the rule; the others are regenerated; the
    counters in summary.json match the transcript."""
    off, t_off = _run(tmp_path, "off", "prompt.require_label=off")
    on, t_on = _run(tmp_path, "on", "prompt.require_label=any")
    names = NameLabeler(_kb_labels())
    first_off = [d for d in t_off if d["t"] == 0]
    first_on = [d for d in t_on if d["t"] == 0]
    unnamed_off = [names.label_one(d["response"]) < 0 for d in first_off]
    assert any(unnamed_off), "the smoke trial should show the small model naming no flower at least once"
    for a, b, unnamed in zip(first_off, first_on, unnamed_off):
        assert a["context"] == b["context"]  # t=0: the knowledge base's own answers
        assert (a["response"] == b["response"]) != unnamed  # labelled rows kept, unnamed ones regenerated

    p_off, p_on = off["protocol"], on["protocol"]
    assert p_off["label_retries"] == 0 and p_on["label_retries"] >= sum(unnamed_off)
    for summary, transcript in ((off, t_off), (on, t_on)):
        p = summary["protocol"]
        assert p["answers"] == len(transcript) == 6 * 3
        assert summary["generations"] == p["answers"] + p["phrase_retries"] + p["label_retries"]
        assert p["unlabeled_answers"] == sum(names.label_one(d["response"]) < 0 for d in transcript)
        assert p["unlabeled_share"] == pytest.approx(p["unlabeled_answers"] / p["answers"])
        final = [d for d in transcript if d["t"] == 2]
        assert summary["replicas"][0]["final_unlabeled"] == sum(names.label_one(d["response"]) < 0 for d in final)
    assert p_on["unlabeled_answers"] < p_off["unlabeled_answers"]
    # the same seed repeats a run with the label rule (retries included): tests/test_cli.py's same-seed test


def _kb_labels():
    from tensorsim.knowledge import load_kb
    return load_kb().labels


def test_bad_label_rule_is_refused(tmp_path):
    r = run_cli("trial=smoke", "prompt.require_label=always", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "prompt.require_label='always'" in lines[0] and "any" in lines[0]
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_protocol_counters_survive_resume_shape():
    """Counters are per population tensors: summing a cell's members gives the cell total."""
    from tensorsim.run import protocol_summary
    protocol = {"answers": torch.tensor([30, 30, 30]), "phrase_retries": torch.tensor([1, 0, 2]),
                "label_retries": torch.tensor([4, 5, 6]), "unlabeled_answers": torch.tensor([3, 0, 3])}
    s = protocol_summary(protocol, [0, 2])
    assert s == {"answers": 60, "phrase_retries": 3, "label_retries": 10, "unlabeled_answers": 6,
                 "unlabeled_share": 0.1}
