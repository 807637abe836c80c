import math

import pytest
import torch

from tensorsim.core import metrics
from tensorsim.core.labels import CentroidLabeler, NameLabeler
from tensorsim.core.patterns import PatternRules, last_change_step, run_pattern, silo_patterns

NAMES = ["Rose", "Lily", "Calla Lily", "Daisy", "Gerbera Daisy", "Iris"]


@pytest.mark.parametrize("text,expected", [
    ("The prettiest flower is the Calla Lily, elegant.", "Calla Lily"),  # longer name wins at the same position
    ("The prettiest flower is a lily, unlike the rose.", "Lily"),  # earliest occurrence wins
    ("A ROSE beats a daisy", "Rose"),  # case-insensitive
    ("gerbera daisy then rose", "Gerbera Daisy"),
    ("Roses are red", "Rose"),  # plural still names the flower
    ("In prose, an iris", "Iris"),  # "prose" does not contain the word rose
    ("The prettiest flower is a tulip.", None),  # unknown name -> unlabeled
    ("", None),
])
def test_name_labeler(text, expected):
    label = NameLabeler(NAMES)([text])[0].item()
    assert label == (-1 if expected is None else NAMES.index(expected))


def test_centroid_labeler_picks_nearest_centroid():
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    lab = CentroidLabeler(ref, torch.tensor([0, 0, 1]), 2)
    assert lab(torch.tensor([[0.8, 0.3], [0.2, 0.9]])).tolist() == [0, 1]


def test_metrics_hand_computed():
    # population 0: labels 0,0,1,-1 ; population 1: all the same
    cur = torch.tensor([[0, 0, 1, -1], [2, 2, 2, 2]])
    prev = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 2]])
    assert metrics.n_silos(cur, 3).tolist() == [3, 1]
    e = metrics.entropy(cur, 3)
    assert e[0].item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert e[1].item() == 0.0 and not math.copysign(1, e[1].item()) < 0
    assert metrics.stability(prev, cur).tolist() == [0.5, 1.0]


def test_entropy_of_thirty_distinct_flowers_is_ln30():
    assert metrics.entropy(torch.arange(30)[None], 30).item() == pytest.approx(math.log(30))
    assert round(math.log(30), 2) == 3.40


def test_unlabeled_counts_as_its_own_group():
    lab = torch.tensor([[-1, -1, 0]])
    assert metrics.n_silos(lab, 1).item() == 2


RULES = PatternRules(window=3, stable_min_stability=1.0, decay_min_silo_drop=1, decay_min_entropy_drop=0.1)


def test_run_patterns():
    nan = None
    assert run_pattern([nan, 0.5, 0.9, 1.0], [3, 2, 2, 1], [1.0, 0.6, 0.6, 0.0], RULES) == "single"
    assert run_pattern([nan, 0.5, 1.0, 1.0], [3, 2, 2, 2], [1.0, 0.6, 0.6, 0.6], RULES) == "stable"
    assert run_pattern([nan, 0.9, 0.9, 0.9], [4, 4, 3, 2], [1.2, 1.1, 0.9, 0.6], RULES) == "decaying"
    assert run_pattern([nan, 0.6, 0.5, 0.6], [2, 2, 2, 2], [0.69, 0.67, 0.69, 0.68], RULES) == "unstable"


def test_silo_patterns_and_last_change():
    # window of 3 steps; 4 agents. silo 0 keeps agents {0,1}; silo 1 loses agent 3 to silo 2, which
    # gains it (unstable); silo 3 dies out (decaying)
    labels = torch.tensor([
        [0, 0, 1, 1, 3],
        [0, 0, 1, 2, 3],
        [0, 0, 1, 2, 2],
    ])
    recs = {r["label"]: r for r in silo_patterns(labels, RULES, ["a", "b", "c", "d"])}
    assert recs[0]["pattern"] == "stable"
    assert recs[1]["pattern"] == "decaying" and (recs[1]["size_start"], recs[1]["size_end"]) == (2, 1)
    assert recs[2]["pattern"] == "unstable"
    assert recs[3]["pattern"] == "decaying" and recs[3]["size_end"] == 0
    single = silo_patterns(torch.tensor([[0, 1], [0, 0]]), RULES, ["a", "b"])
    assert {r["label"]: r["pattern"] for r in single} == {0: "single", 1: "decaying"}
    assert last_change_step([None, 0.5, 1.0, 0.9, 1.0, 1.0]) == 3
    assert last_change_step([None, 1.0]) == 0
