"""tensorsim.analysis.analyze on wide CSVs and transcripts written by hand."""
import csv
import json
import math

import pytest
from conftest import run_cli

from tensorsim.analysis import analyze as an
from tensorsim.analysis.transcripts import parse_cell
from tensorsim.knowledge import load_kb

LABELS = load_kb().labels
ROSE, TULIP, LILY, CALLA = (LABELS.index(x) for x in ("Rose", "Tulip", "Lily", "Calla Lily"))

# one run saved in two halves; list-literal cells as some exporters write them
HALF_1 = '''step,alice,bob,carol
0,"[' The prettiest flower is the rose, red and proud.']",The prettiest flower is the Tulip.,"[""The prettiest flower is the calla lily, it's white.""]"
1,"['The prettiest flower is the rose.']",The prettiest flower is a rose,The prettiest flower is the lily
'''
HALF_2_RESTART = '''step,alice,bob,carol
0,The prettiest flower is the rose.,The prettiest flower is the rose.,"['The prettiest flower is the rose.']"
1,The prettiest flower is the rose.,The prettiest flower is the rose.,The prettiest flower is the rose.

'''
HALF_2_CONTINUE = HALF_2_RESTART.replace("\n0,", "\n2,").replace("\n1,", "\n3,")
# the expected labels [t][agent], and the metrics they imply
EXPECTED = [[ROSE, TULIP, CALLA], [ROSE, ROSE, LILY], [ROSE, ROSE, ROSE], [ROSE, ROSE, ROSE]]
E1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def halves(tmp_path):
    return write(tmp_path / "a.csv", HALF_1), write(tmp_path / "b.csv", HALF_2_RESTART)


def test_two_file_wide_csv(tmp_path, halves, capsys):
    out = tmp_path / "out"
    assert an.main([*map(str, halves), "--out", str(out), "--window", "2"]) == 0
    assert "restarts at 0; its rows are t = 2..3" in capsys.readouterr().err
    m = read_csv(out / "metrics.csv")
    assert list(m[0]) == ["replica", "t", "stability", "entropy", "n_silos"]
    assert [r["stability"] for r in m] == ["", "0.333333", "0.666667", "1.000000"]
    assert [float(r["entropy"]) for r in m] == pytest.approx([math.log(3), E1, 0, 0], abs=1e-6)
    assert [r["entropy"] for r in m][2:] == ["0.000000", "0.000000"]  # no "-0.000000"
    assert [int(r["n_silos"]) for r in m] == [3, 2, 1, 1]
    a = read_csv(out / "agents.csv")
    assert list(a[0]) == ["replica", "t", "agent", "label", "label_name", "partner", "mirrored"]
    assert [[int(r["label"]) for r in a if int(r["t"]) == t] for t in range(4)] == EXPECTED
    assert a[2]["label_name"] == "Calla Lily" and a[5]["label_name"] == "Lily"
    assert all(r["partner"] == "" and r["mirrored"] == "" for r in a)
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] and s["n"] == 3 and s["steps"] == 4 and s["agent_names"] == ["alice", "bob", "carol"]
    rep = s["replicas"][0]
    assert rep["final_n_silos"] == 1 and rep["pattern"] == "single" and rep["last_change_step"] == 2
    assert rep["silos"] == [{"label": ROSE, "name": "Rose", "size_start": 3, "size_end": 3, "pattern": "single"}]
    tr = [json.loads(x) for x in open(out / "transcript.jsonl")]
    assert tr[0]["response"] == " The prettiest flower is the rose, red and proud."  # list literal unwrapped
    assert tr[2]["response"] == "The prettiest flower is the calla lily, it's white."
    assert tr[3]["response"] == "['The prettiest flower is the rose.']"[2:-2]
    for name in ("stability.png", "entropy.png", "silos.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_continuing_steps_give_the_same_run(tmp_path, halves):
    b2 = write(tmp_path / "b2.csv", HALF_2_CONTINUE)
    an.main([str(halves[0]), str(halves[1]), "--out", str(tmp_path / "r")])
    an.main([str(halves[0]), str(b2), "--out", str(tmp_path / "c")])
    for f in ("metrics.csv", "agents.csv"):
        assert (tmp_path / "r" / f).read_text() == (tmp_path / "c" / f).read_text()
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert any("continues at 2" in n for n in s["notes"])
    # the window (20) is capped to T = 4, so the silos of the whole run are labelled
    assert s["config"]["pattern"]["window"] == 4
    pats = {x["name"]: x["pattern"] for x in s["replicas"][0]["silos"]}
    assert pats == {"Rose": "single", "Tulip": "decaying", "Calla Lily": "decaying", "Lily": "unstable"}


def test_columns_in_another_order_are_matched_by_name(tmp_path, halves):
    swapped = "step,carol,alice,bob\n0,The prettiest flower is the tulip,The prettiest flower is the rose.,x rose\n"
    write(tmp_path / "b.csv", swapped)
    assert an.main([str(halves[0]), str(tmp_path / "b.csv"), "--out", str(tmp_path / "o")]) == 0
    a = read_csv(tmp_path / "o" / "agents.csv")
    assert [int(r["label"]) for r in a if r["t"] == "2"] == [ROSE, ROSE, TULIP]


def test_names_file(tmp_path):
    write(tmp_path / "names.txt", "# fruit\nApple\n\npear\nGreen Apple\n")
    write(tmp_path / "f.csv", "t,x,y\n0,An apple a day,A green apple\n1,a pear,pineapple\n")
    assert an.main([str(tmp_path / "f.csv"), "--names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "o")]) == 0
    a = read_csv(tmp_path / "o" / "agents.csv")
    assert [r["label_name"] for r in a] == ["Apple", "Green Apple", "pear", "unlabeled"]  # no apple in "pineapple"
    m = read_csv(tmp_path / "o" / "metrics.csv")
    assert [r["stability"] for r in m] == ["", "0.000000"]


def test_transcript_jsonl_two_files(tmp_path):
    recs = [{"replica": r, "t": t, "agent": i, "context": "c", "response": resp}
            for r, rows in ((0, [["a rose", "a tulip"], ["a rose", "a rose"]]),
                            (1, [["a lily", "a tulip"], ["a tulip", "a lily"]]))
            for t, row in enumerate(rows) for i, resp in enumerate(row)]
    write(tmp_path / "t1.jsonl", "".join(json.dumps(x) + "\n" for x in recs if x["t"] == 0))
    write(tmp_path / "t2.jsonl", "".join(json.dumps(dict(x, t=0)) + "\n" for x in recs if x["t"] == 1))
    assert an.main([str(tmp_path / "t1.jsonl"), str(tmp_path / "t2.jsonl"), "--out", str(tmp_path / "o")]) == 0
    m = read_csv(tmp_path / "o" / "metrics.csv")
    by = {(r["replica"], r["t"]): r for r in m}
    assert by[("0", "1")]["stability"] == "0.500000" and by[("0", "1")]["n_silos"] == "1"
    assert by[("1", "1")]["stability"] == "0.000000" and by[("1", "1")]["n_silos"] == "2"
    assert float(by[("1", "1")]["entropy"]) == pytest.approx(math.log(2), abs=1e-6)
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [(r["replica"], r["final_n_silos"], r["pattern"]) for r in s["replicas"]] == [(0, 1, "single"),
                                                                                        (1, 2, "unstable")]


def test_parse_cell():
    assert parse_cell("['x y']") == "x y"
    assert parse_cell(' ["a", "b"] ') == "a b"
    assert parse_cell("[not a literal") == "[not a literal"
    assert parse_cell("[1, 2]") == "[1, 2]"
    assert parse_cell("[__import__('os').system('echo hi')]") == "[__import__('os').system('echo hi')]"
    assert parse_cell("plain, text") == "plain, text"


ERRORS = [
    ("ragged", {"r.csv": "step,a,b\n0,x rose,y\n1,z\n"}, "r.csv line 3: 2 cells, expected 3"),
    ("empty", {"e.csv": "step,a,b\n0,x rose,\n"}, "e.csv line 2: empty answer in column 'b'"),
    ("empty literal", {"e.csv": "step,a,b\n0,x rose,['']\n"}, "empty answer in column 'b'"),
    ("unknown format", {"x.txt": "hello"}, "x.txt: unknown format '.txt'"),
    ("missing", {}, "missing.csv: no such file"),
    ("columns", {"a.csv": "step,a,b\n0,x,y\n", "b.csv": "step,a,c\n0,x,y\n"},
     "b.csv: agent columns differ from"),
    ("step column", {"s.csv": "a,b\nrose,tulip\n"}, "the first column must be the step index"),
    ("mixed", {"a.csv": "step,a\n0,x\n", "b.jsonl": '{"t": 0, "agent": 0, "response": "x"}\n'}, "mixed input formats"),
    ("bad json", {"j.jsonl": '{"t": 0, "agent": 0, "response": "x"}\n{oops\n'}, "j.jsonl line 2: not JSON"),
    ("missing agent", {"j.jsonl": '{"t": 0, "agent": 0, "response": "x"}\n{"t": 0, "agent": 1, "response": "y"}\n'
                                  '{"t": 1, "agent": 0, "response": "x"}\n'}, "t=1: answers of 1 of 2 agents"),
    ("header only", {"h.csv": "step,a,b\n"}, "h.csv: no rows after the header"),
]


@pytest.mark.parametrize("name,files,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_exit_2_with_one_line(tmp_path, capsys, name, files, message):
    paths = [write(tmp_path / fn, text) for fn, text in files.items()] or [tmp_path / "missing.csv"]
    assert an.main([*map(str, paths), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_refuses_completed_out_unless_overwrite(tmp_path, halves, capsys):
    out = tmp_path / "out"
    assert an.main([str(halves[0]), "--out", str(out)]) == 0
    first = (out / "metrics.csv").read_text()
    assert an.main([*map(str, halves), "--out", str(out)]) == 2
    assert "already holds a completed analysis" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == first
    assert an.main([*map(str, halves), "--out", str(out), "--overwrite"]) == 0
    assert len(read_csv(out / "metrics.csv")) == 4


def test_cli_errors_without_traceback(tmp_path):
    write(tmp_path / "r.csv", "step,a,b\n0,x\n")
    r = run_cli(tmp_path / "r.csv", "--out", tmp_path / "o", module="tensorsim.analyze")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {tmp_path / 'r.csv'} line 2: 2 cells, expected 3 like the header (ragged row)"


def test_centroid_labeler_needs_embed(tmp_path, halves, capsys):
    assert an.main([str(halves[0]), "--out", str(tmp_path / "o"), "--labeler", "centroid"]) == 2
    assert "--labeler centroid needs --embed" in capsys.readouterr().err


def test_embed_distances_and_perspective(tmp_path, halves):
    out = tmp_path / "out"
    assert an.main([*map(str, halves), "--out", str(out), "--embed", "--device", "cpu"]) == 0
    d = read_csv(out / "distance.csv")
    vals = [float(r["mean_distance"]) for r in d]
    assert len(vals) == 4 and vals[0] > 0.1 and vals[1] > 0
    # identical answers: one embedding each (the embedder dedups), so exactly 0 apart on any CPU
    assert vals[2] == 0 and vals[3] == 0
    for name in ("distance.png", "perspective.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["embedder"]["name"] == "all-MiniLM-L6-v2"
