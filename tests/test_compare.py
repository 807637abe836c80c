"""tensorsim.compare: the two-sample tests against scipy, cell-by-cell flags on synthetic run sets in the
authors' file layout, one-line errors, and the README's three commands run as written."""
import csv
import math
import re
import shlex

import numpy as np
import pytest
from authors_layout import converging, frozen, write_run
from conftest import ROOT, run_cli

from tensorsim.analysis import analyze as an, compare as cmp, twosample as ts

st = pytest.importorskip("scipy.stats")

AUTHORS = "output{p10}_{k}_{replica}"
COMMON = [(1, 0.2), (1, 0.5), (25, 0.2), (25, 0.5)]
DIFFERENT = (25, 0.5)  # B's runs there never converge
NUDGED = (1, 0.5)      # B's replica 8 there converges one step later: not a difference at any level


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ the statistics

SAMPLES = [([1, 1, 2, 3, 3, 4, 1, 2], [2, 3, 3, 4, 4, 5, 2, 3]), ([0.5, 0.7, 0.7], [0.9, 1.0, 0.7, 0.8]),
           ([1] * 8, [1] * 7 + [2]), ([3, 1, 4, 1, 5], [9, 2, 6])]


@pytest.mark.parametrize("a,b", SAMPLES)
def test_mann_whitney_matches_scipy(a, b):
    u, p = ts.mann_whitney(a, b)
    ref = st.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert u == ref.statistic and p == pytest.approx(ref.pvalue, rel=1e-12)


@pytest.mark.parametrize("a,b", SAMPLES)
def test_exact_permutation_matches_scipy(a, b):
    obs, p, exact = ts.permutation_test(a, b)
    ref = st.permutation_test((np.array(a, float), np.array(b, float)), lambda x, y: abs(x.mean() - y.mean()),
                              permutation_type="independent", alternative="greater", n_resamples=np.inf)
    assert exact and obs == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-12)


def test_random_permutations_beyond_the_exact_limit():
    a, b = np.arange(30.0), np.arange(30.0) + 40  # C(60, 30) splits: drawn, not enumerated
    obs, p, exact = ts.permutation_test(a, b)
    assert not exact and obs == 40 and p == 1 / (1 + ts.RANDOM_SPLITS)  # never 0
    assert ts.permutation_test(a, b) == (obs, p, exact)  # a fixed seed: the same p every time
    assert ts.permutation_test(a, a + 0.0)[1] == 1.0


def test_auto_test_choice_and_degenerate_samples():
    assert ts.two_sample([1] * 8, [1] * 8) == ("permutation", 1.0)          # 12,870 splits: exact
    assert ts.two_sample([1] * 8, [4] * 8) == ("permutation", 2 / 12870)    # only the two extreme splits
    assert ts.two_sample(list(range(30)), list(range(30)))[0] == "mann-whitney"
    assert ts.two_sample([1, 2, 3], [4, 5, 6], "mwu")[0] == "mann-whitney"
    assert ts.mann_whitney([2] * 5, [2] * 4) == (10.0, 1.0)                 # all tied: nothing to tell apart
    name, p = ts.two_sample([], [1, 2])
    assert name == "none" and math.isnan(p)


def test_adjustments():
    p = [0.01, 0.04, 0.03, math.nan, 0.5]
    assert ts.adjust(p, "holm")[:3] + ts.adjust(p, "holm")[4:] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(ts.adjust(p, "holm")[3])
    bh = ts.adjust(p, "bh")
    assert [bh[i] for i in (0, 1, 2, 4)] == pytest.approx(st.false_discovery_control([0.01, 0.04, 0.03, 0.5]))
    assert ts.adjust(p, "none")[:3] == p[:3]


# ------------------------------------------------------------------------------------- the run sets

def rows_for(side: str, k: int, p: float, r: int) -> list[list[str]]:
    if side == "b" and (k, p) == DIFFERENT:
        return frozen(4, 6)
    at = 5 if side == "b" and (k, p) == NUDGED and r == 8 else 2 + r % 3
    rows = converging(4, 6, at=at, winner=r % 4)
    return [row[::-1] for row in rows] if side == "b" else rows  # B: other agent order, the same metrics


def authors_files(folder, side: str, extra_cell: tuple) -> None:
    for k, p in COMMON + [extra_cell]:
        for r in range(1, 9):
            write_run(folder, p, k, r, rows_for(side, k, p, r))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Run sets A and B imported from the authors' layout: 4 common cells, one more on each side."""
    root = tmp_path_factory.mktemp("sets")
    for side, extra in (("a", (5, 0.2)), ("b", (15, 0.7))):
        authors_files(root / f"{side}_files", side, extra)
        an.analyze_grid([root / f"{side}_files"], root / side, AUTHORS)
    return root


def test_sets_differing_in_one_cell_flag_exactly_that_cell(sets, tmp_path):
    out = tmp_path / "cmp"
    result = cmp.compare(sets / "a", sets / "b", out, names=("mine", "published"))
    assert [(key.k, key.p) for key in result["common"]] == COMMON
    assert [key.items for key in result["only_a"]] == [(("k", 5), ("p", 0.2))]
    assert [key.items for key in result["only_b"]] == [(("k", 15), ("p", 0.7))]
    flagged = {(r["k"], r["p"], r["metric"]) for r in result["rows"] if r["differs"]}
    assert flagged == {(25, 0.5, m) for m in cmp.METRICS}
    rows = {(r["k"], r["p"], r["metric"]): r for r in read_csv(out / "compare.csv")}
    assert len(rows) == 4 * 4
    r = rows[("25", "0.5", "final_silos")]
    assert (r["runs_a"], r["mean_a"], r["runs_b"], r["mean_b"], r["diff"]) == ("8", "1", "8", "4", "-3")
    assert r["test"] == "permutation" and float(r["p_value"]) == pytest.approx(2 / 12870)
    assert float(r["p_adjusted"]) == pytest.approx(16 * 2 / 12870) and r["differs"] == "1"
    nudged = rows[("1", "0.5", "last_change")]
    assert float(nudged["diff"]) == pytest.approx(-1 / 8) and nudged["differs"] == "0"
    md = (out / "compare.md").read_text()
    assert "**1 of 4 common cells differ**: k=25, p=0.5 (final silos, final E [nats], last change step," in md
    assert "Only in mine: k=5, p=0.2. Only in published: k=15, p=0.7." in md
    assert "| 25 | 0.5 | 8 | 8 | 1.00 ± 0.00 | 4.00 ± 0.00 | -3 | permutation | 0.000155 | 0.00249 | **yes** |" in md
    for name in ("compare_heatmaps.png", "compare_stability.png", "compare_entropy.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_identical_sets_flag_nothing(sets, tmp_path):
    result = cmp.compare(sets / "a", sets / "a", tmp_path / "same")
    assert not [r for r in result["rows"] if r["differs"]]
    assert all(r["p_value"] == 1.0 and r["diff"] == 0 for r in result["rows"])
    assert "**0 of 5 common cells differ**." in (tmp_path / "same" / "compare.md").read_text()


def test_unadjusted_and_a_chosen_metric(sets, tmp_path):
    result = cmp.compare(sets / "a", sets / "b", tmp_path / "o", metrics="final_silos", how="none", alpha=0.001)
    assert [(r["k"], r["p"], r["metric"], r["differs"]) for r in result["rows"]] == [
        (1, 0.2, "final_silos", False), (1, 0.5, "final_silos", False), (25, 0.2, "final_silos", False),
        (25, 0.5, "final_silos", True)]
    assert result["rows"][3]["p_adjusted"] == result["rows"][3]["p_value"]


ERRORS = [
    (lambda s, t: [str(t / "nowhere"), str(s / "b")], "A {t}/nowhere: no such directory"),
    (lambda s, t: [str(s / "a"), str(t)], "B {t}: no complete run found"),
    (lambda s, t: [str(s / "a" / "cells" / "k5_p0.2"), str(s / "b" / "cells" / "k15_p0.7")],
     "no (k, p) cell in both sets: A has k=5, p=0.2; B has k=15, p=0.7"),
    (lambda s, t: [str(s / "a"), str(s / "b"), "--metrics", "final_silos,silos"],
     "--metrics silos is not known: choose from final_silos, final_entropy, last_change, window_stability"),
    (lambda s, t: [str(s / "a"), str(s / "b"), "--alpha", "1.5"], "--alpha=1.5 is not allowed: a number in (0, 1)"),
    (lambda s, t: [str(s / "a"), str(s / "b"), "--adjust", "fdr"], "--adjust=fdr is not allowed: one of holm, bh, none"),
    (lambda s, t: [str(s / "a"), str(s / "b"), "--names", "x"], "--names 'x' is not allowed: two different names"),
]


@pytest.mark.parametrize("args,message", ERRORS, ids=["missing", "empty", "no common cell", "metric", "alpha",
                                                      "adjust", "names"])
def test_errors_exit_2_with_one_line_and_write_nothing(sets, tmp_path, capsys, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = args(sets, empty if "no complete run" in message else tmp_path)
    out = tmp_path / "out"
    assert cmp.main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    expected = message.format(t=empty if "no complete run" in message else tmp_path)
    assert err.startswith(f"error: {expected}") and "\n" not in err, err
    assert not out.exists()


def test_the_command_exits_2_without_a_traceback(tmp_path):
    r = run_cli(tmp_path / "x", tmp_path / "y", module="tensorsim.compare")
    assert r.returncode == 2 and r.stderr == f"error: A {tmp_path / 'x'}: no such directory\n"


# ------------------------------------------------------------------------------------------ README

def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- compare-example -->\n```bash\n(.*?)```", text, re.S)
    assert match, "README lost its comparison example"
    return [shlex.split(line) for line in match.group(1).strip().splitlines()]


def test_readme_three_commands_from_the_authors_layout_to_a_table(tmp_path):
    """The commands as the README prints them; only the directories become the fixtures' (B: a grid imported
    the same way stands in for `python -m tensorsim trial=paper_grid`, which needs the LLM)."""
    commands = readme_commands()
    assert [c[:3] for c in commands] == [["python", "-m", "tensorsim.analyze"], ["python", "-m", "tensorsim.report"],
                                         ["python", "-m", "tensorsim.compare"]]
    authors_files(tmp_path / "published", "b", (15, 0.7))
    authors_files(tmp_path / "mine_files", "a", (5, 0.2))
    assert an.main([str(tmp_path / "mine_files"), "--pattern", AUTHORS, "--out", str(tmp_path / "mine")]) == 0
    paths = {"published/": tmp_path / "published", "published_runs": tmp_path / "published_runs",
             "comparison": tmp_path / "comparison"}
    sim = [a for a in commands[2][3:] if a.startswith("outputs/")]
    assert len(sim) == 1
    paths[sim[0]] = tmp_path / "mine"
    for cmd in commands:
        r = run_cli(*[paths.get(a, a) for a in cmd[3:]], module=cmd[2], timeout=300)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    phase = read_csv(tmp_path / "published_runs" / "phase.csv")
    assert [(r["k"], r["p"], r["runs"]) for r in phase] == [("1", "0.2", "8"), ("1", "0.5", "8"), ("15", "0.7", "8"),
                                                            ("25", "0.2", "8"), ("25", "0.5", "8")]
    table = read_csv(tmp_path / "comparison" / "compare.csv")
    assert {(r["k"], r["p"]) for r in table if r["differs"] == "1"} == {("25", "0.5")}
    md = (tmp_path / "comparison" / "compare.md").read_text()
    assert md.startswith("# tensorsim vs published")
