"""Parameters of imported runs: --set, file-name patterns (p10, k, replica, _2nd parts) and a grid
written from many files in one `analyze` call, on synthetic files in the authors' layout."""
import csv
import json
from pathlib import Path

import pytest
from authors_layout import converging, frozen, write_run

from tensorsim.analysis import analyze as an
from tensorsim.analysis.imported import compile_pattern, expand_inputs, group_runs, parse_name, parse_sets
from tensorsim.errors import UserError

AUTHORS = "output{p10}_{k}_{replica}"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------------------------------ parser

@pytest.mark.parametrize("name,values,part", [
    ("output5_25_3.csv", {"p": 0.5, "k": 25, "replica": 3}, 1),
    ("output5_25_3_2nd.csv", {"p": 0.5, "k": 25, "replica": 3}, 2),
    ("output0_1_8.csv", {"p": 0.0, "k": 1, "replica": 8}, 1),
    ("output10_29_0_3rd.csv", {"p": 1.0, "k": 29, "replica": 0}, 3),
    ("output7_15_12.jsonl", {"p": 0.7, "k": 15, "replica": 12}, 1),
])
def test_p10_k_and_replica_from_names(name, values, part):
    assert parse_name(Path(name), compile_pattern(AUTHORS)) == (values, part)
    assert parse_name(Path(name), compile_pattern(AUTHORS + ".csv")) == (values, part)  # extension optional


def test_a_decimal_p_field_and_fields_in_any_order():
    pat = compile_pattern("run_r{replica}_p{p}_k{k}")
    assert parse_name(Path("run_r2_p0.25_k5.csv"), pat) == ({"replica": 2, "p": 0.25, "k": 5}, 1)


@pytest.mark.parametrize("pattern,message", [
    ("output{q}_{k}", "unknown field {q}: the fields are {k}, {p}, {p10}, {replica}"),
    ("output{p}_{p10}", "give p as {p} or as {p10}, not both"),
    ("output{k}_{k}", "a field appears twice"),
    ("output", "has no field"),
    ("output{k", "unbalanced braces"),
])
def test_bad_patterns(pattern, message):
    with pytest.raises(UserError) as e:
        compile_pattern(pattern)
    assert message in str(e.value) and pattern in str(e.value)


@pytest.mark.parametrize("items,message", [
    (["k=0"], "k=0 is not allowed: an integer >= 1"),
    (["p=1.5"], "p=1.5 is not allowed: a number in [0, 1]"),
    (["k=five"], "--set k=five is not allowed: an integer"),
    (["seed=3"], "--set seed=3 is not allowed: the key must be one of k, p, replica"),
    (["k"], "key=value"),
    (["k=1", "k=2"], "--set k is given twice"),
])
def test_bad_sets(items, message):
    with pytest.raises(UserError) as e:
        parse_sets(items)
    assert message in str(e.value)


def test_sets():
    assert parse_sets(["k=5", "p=0.5", "replica=3"]) == {"k": 5, "p": 0.5, "replica": 3}


def test_replicas_are_kept_as_numbered_and_parts_join_in_order(tmp_path):
    for r in (1, 2, 8):
        write_run(tmp_path, 0.5, 25, r, converging(3, 4, at=2))
    # given in reverse order, and the _2nd file before its first part
    runs = group_runs(sorted(tmp_path.iterdir(), reverse=True), compile_pattern(AUTHORS), {})
    assert [(r.k, r.p, r.replica) for r in runs] == [(25, 0.5, 1), (25, 0.5, 2), (25, 0.5, 8)]
    assert [f.name for f in runs[2].files] == ["output5_25_8.csv", "output5_25_8_2nd.csv"]


def test_set_fills_a_field_the_pattern_lacks_and_refuses_one_it_has(tmp_path):
    files = write_run(tmp_path, 0.5, 25, 3, converging(3, 4, at=2), split=False)
    pat = compile_pattern("output5_25_{replica}")
    assert [(r.k, r.p, r.replica) for r in group_runs(files, pat, {"k": 25, "p": 0.5})] == [(25, 0.5, 3)]
    with pytest.raises(UserError, match=r"--set k=5 and --pattern 'output\{p10\}_\{k\}_\{replica\}' both give k"):
        group_runs(files, compile_pattern(AUTHORS), {"k": 5})


def test_duplicate_runs_for_one_k_p_replica(tmp_path):
    a = write_run(tmp_path, 0.5, 25, 3, converging(3, 4, at=2), split=False)[0]
    b = a.with_name("output05_25_03.csv")  # the same run: p10 05 = 5, replica 03 = 3
    b.write_text(a.read_text())
    with pytest.raises(UserError) as e:
        group_runs([a, b], compile_pattern(AUTHORS), {})
    assert str(e.value) == f"{a} and {b} are both part 1 of run k=25, p=0.5, replica 3: one run per (k, p, replica)"


def test_a_second_part_without_its_first(tmp_path):
    second = write_run(tmp_path, 0.5, 25, 3, converging(3, 4, at=2))[1]
    with pytest.raises(UserError) as e:
        group_runs([second], compile_pattern(AUTHORS), {})
    assert str(e.value) == f"{second}: run k=25, p=0.5, replica 3 lacks its part 1 (found parts 2)"


def test_p10_above_ten_names_the_file(tmp_path):
    with pytest.raises(UserError) as e:
        parse_name(tmp_path / "output11_5_1.csv", compile_pattern(AUTHORS))
    assert str(e.value) == f"{tmp_path / 'output11_5_1.csv'}: p=1.1 is not allowed: a number in [0, 1]"


def test_inputs_directories_and_quoted_globs(tmp_path):
    for k in (1, 25):
        write_run(tmp_path, 0.2, k, 1, converging(3, 4, at=2))
    (tmp_path / "README.txt").write_text("not data")
    assert len(expand_inputs([tmp_path])) == 4  # data files only
    assert [p.name for p in expand_inputs([tmp_path / "output2_25_*"])] == ["output2_25_1.csv", "output2_25_1_2nd.csv"]
    with pytest.raises(UserError, match="no file matches"):
        expand_inputs([tmp_path / "output9_*"])
    with pytest.raises(UserError, match="no such file or directory"):
        expand_inputs([tmp_path / "missing"])


# ------------------------------------------------------------------------------------- the command

def test_a_name_that_does_not_match_is_one_line_and_nothing_is_written(tmp_path, capsys):
    write_run(tmp_path / "in", 0.5, 25, 3, converging(3, 4, at=2))
    odd = tmp_path / "in" / "output5_25.csv"
    odd.write_text("step,a\n0,x\n")
    out = tmp_path / "out"
    assert an.main([str(tmp_path / "in"), "--pattern", AUTHORS, "--out", str(out)]) == 2
    assert one_line_error(capsys) == f"error: {odd}: the name does not match --pattern '{AUTHORS}'"
    assert not out.exists()


def test_a_bad_file_in_one_run_writes_no_cell(tmp_path, capsys):
    write_run(tmp_path / "in", 0.2, 1, 1, converging(3, 4, at=2))
    bad = write_run(tmp_path / "in", 0.5, 25, 1, converging(3, 4, at=2))[1]
    bad.write_text(bad.read_text() + "9,only one cell\n")
    assert an.main([str(tmp_path / "in"), "--pattern", AUTHORS, "--out", str(tmp_path / "out")]) == 2
    assert "2 cells, expected 4 like the header (ragged row)" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_pattern_without_k_or_p_is_refused(tmp_path, capsys):
    write_run(tmp_path, 0.5, 25, 3, converging(3, 4, at=2))
    assert an.main([str(tmp_path), "--pattern", "output5_25_{replica}", "--set", "k=25",
                    "--out", str(tmp_path / "o")]) == 2
    assert "every run needs k and p; give p by a field" in one_line_error(capsys)


def test_set_gives_one_run_its_parameters(tmp_path):
    files = write_run(tmp_path, 0.5, 25, 3, converging(3, 4, at=2))
    out = tmp_path / "one"
    assert an.main([*map(str, files), "--set", "k=25", "--set", "p=0.5", "--set", "replica=3", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["k"], s["p"], [r["replica"] for r in s["replicas"]]) == (25, 0.5, [3])
    m = read_csv(out / "metrics.csv")
    assert list(m[0]) == ["replica", "t", "stability", "entropy", "n_silos"]  # a single run: no k, p columns
    assert {r["replica"] for r in m} == {"3"}


def test_a_grid_from_many_files_as_a_packed_simulation_writes_it(tmp_path, capsys):
    for k in (1, 25):
        for p in (0.2, 0.5):
            for r in (1, 2):
                rows = frozen(4, 6) if (k, p) == (25, 0.5) else converging(4, 6, at=2 + r)
                write_run(tmp_path / "in", p, k, r, rows)
    out = tmp_path / "grid"
    assert an.main([str(tmp_path / "in"), "--pattern", AUTHORS, "--out", str(out)]) == 0
    assert "8 runs in 4 (k, p) cells" in capsys.readouterr().out
    top = json.loads((out / "summary.json").read_text())
    assert [(c["k"], c["p"], c["dir"], c["replicas"]) for c in top["cells"]] == [
        (1, 0.2, "cells/k1_p0.2", [1, 2]), (1, 0.5, "cells/k1_p0.5", [1, 2]),
        (25, 0.2, "cells/k25_p0.2", [1, 2]), (25, 0.5, "cells/k25_p0.5", [1, 2])]
    cell = out / "cells" / "k25_p0.5"
    s = json.loads((cell / "summary.json").read_text())
    assert (s["k"], s["p"], s["n"], s["steps"]) == (25, 0.5, 4, 6)
    assert [(r["replica"], r["final_n_silos"], r["pattern"]) for r in s["replicas"]] == [(1, 4, "stable"),
                                                                                       (2, 4, "stable")]
    assert [Path(f).name for f in s["replicas"][0]["files"]] == ["output5_25_1.csv", "output5_25_1_2nd.csv"]
    m = read_csv(cell / "metrics.csv")
    assert list(m[0])[-2:] == ["k", "p"] and {(r["k"], r["p"]) for r in m} == {("25", "0.5")}
    assert len(m) == 2 * 6  # both halves joined: t = 0..5 for each replica
    # the _2nd half continues the run: the same metrics as analysing the two files of one run by hand
    one = tmp_path / "by_hand"
    an.main([str(tmp_path / "in" / "output2_1_2.csv"), str(tmp_path / "in" / "output2_1_2_2nd.csv"),
             "--set", "replica=2", "--out", str(one)])
    grid_rows = [r for r in read_csv(out / "cells" / "k1_p0.2" / "metrics.csv") if r["replica"] == "2"]
    assert [list(r.values())[:5] for r in grid_rows] == [list(r.values()) for r in read_csv(one / "metrics.csv")]


def test_a_grid_with_embeddings_loads_the_embedder_once_and_writes_distances_per_cell(tmp_path, monkeypatch):
    from tensorsim.analysis import perspective

    loads = []
    real = perspective.make_embedder
    monkeypatch.setattr(perspective, "make_embedder", lambda *a: loads.append(a) or real(*a))
    for k in (1, 5):
        for r in (1, 2):
            write_run(tmp_path / "in", 0.5, k, r, converging(3, 4, at=2))
    out = tmp_path / "grid"
    assert an.main([str(tmp_path / "in"), "--pattern", AUTHORS, "--out", str(out), "--embed", "--device", "cpu"]) == 0
    for cell in ("k1_p0.5", "k5_p0.5"):
        d = read_csv(out / "cells" / cell / "distance.csv")
        assert [(r["replica"], r["t"]) for r in d] == [(str(r), str(t)) for r in (1, 2) for t in range(4)]
        assert float(d[0]["mean_distance"]) > 0 and float(d[3]["mean_distance"]) == 0  # one flower left at t = 3
        assert (out / "cells" / cell / "perspective.png").read_bytes()[:4] == b"\x89PNG"
    assert len(loads) == 1  # one embedder for the four runs


def test_runs_of_one_cell_must_have_the_same_shape(tmp_path, capsys):
    write_run(tmp_path, 0.5, 25, 1, converging(3, 4, at=2))
    short = write_run(tmp_path, 0.5, 25, 2, converging(3, 2, at=1))[0]
    assert an.main([str(tmp_path), "--pattern", AUTHORS, "--out", str(tmp_path / "o")]) == 2
    assert one_line_error(capsys) == (f"error: {short}: 3 agents x 2 steps, but {tmp_path / 'output5_25_1.csv'} has "
                                      f"3 x 4: runs of one (k, p) cell must match")
    assert not (tmp_path / "o").exists()
