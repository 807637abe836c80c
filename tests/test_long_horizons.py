"""Long runs (README "Long runs"): the LLM agents' text table stays bounded and renumbering it changes no
output, a checkpoint taken after a compaction resumes to the same bytes, and a run announces how large its
tables will get (refusing one the disk cannot hold)."""
import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from conftest import ROOT, run_cli
from sim_helpers import tiny_llm_agents
from hydra import compose, initialize_config_dir

from tensorsim import checkpoint
from tensorsim.agents.llm import compact_refs
from tensorsim.errors import UserError
from tensorsim.outputs import (check_room_for_tables, csv_row_bytes, human_bytes, table_bytes_estimate,
                              transcript_row_bytes)

N, M = 6, 5  # trial=smoke: 6 agents, the flower KB's 5 entries each


def test_compact_refs_keeps_the_prefix_and_renumbers_in_order():
    ref = torch.tensor([[[0, 7, 3], [9, 7, 1]], [[12, 2, 9], [4, 12, 0]]])  # [B=2, n=2, m=3], table of 13
    got, kept = compact_refs(ref, keep=5)
    assert kept.tolist() == [7, 9, 12]
    assert got.tolist() == [[[0, 5, 3], [6, 5, 1]], [[7, 2, 6], [4, 7, 0]]]
    table = [f"t{i}" for i in range(13)]
    compacted = table[:5] + [table[j] for j in kept.tolist()]
    assert [compacted[j] for j in got.flatten().tolist()] == [table[j] for j in ref.flatten().tolist()]


def test_compact_refs_with_nothing_beyond_the_prefix():
    ref = torch.tensor([[[0, 1], [2, 3]]])
    got, kept = compact_refs(ref, keep=4)
    assert kept.numel() == 0 and torch.equal(got, ref)


_agents = tiny_llm_agents


def _held_texts(agents) -> list[str]:
    return [agents.texts[j] for j in agents.entry_ref.flatten().tolist()]


@pytest.mark.parametrize("mode", ["swap", "kb"])
def test_compaction_bounds_the_table_and_changes_no_context(tiny_models, mode):
    """25 steps of 2 populations with garbled answers: the same contexts and answers as a run that keeps
    every text, a table of at most n*m + 2*B*n*m texts (it passed that bound twice and was cut back)."""
    run = ("trial.replicas=2", "trial.noise=0.3", f"trial.noise_mode={mode}")
    compacted, whole = _agents(tiny_models, *run), _agents(tiny_models, *run)
    whole._compact_texts = lambda: None
    B = 2
    bound = N * M + 2 * B * N * M
    lengths = []
    for t in range(25):
        a, b = compacted.step(t), whole.step(t)
        assert a.contexts == b.contexts and a.responses == b.responses, t
        assert _held_texts(compacted) == _held_texts(whole), t
        assert compacted.texts[:N * M] == whole.texts[:N * M]
        lengths.append(len(compacted.texts))
    assert max(lengths) <= bound
    assert len(whole.texts) == N * M + 25 * B * N
    cuts = [t for t in range(1, 25) if lengths[t] < lengths[t - 1]]
    assert cuts[0] == 10 and len(cuts) >= 2  # 30 + 11 * 12 = 162 > 150 after step 10
    assert lengths[10] <= N * M + B * N * M


def test_a_compacted_state_round_trips_through_a_checkpoint(tiny_models):
    run = ("trial.noise=0.3", "trial.noise_mode=swap")
    first, whole = _agents(tiny_models, *run), _agents(tiny_models, *run)
    for t in range(12):  # compacted after step 10
        first.step(t), whole.step(t)
    assert len(first.texts) < N * M + 12 * N
    resumed = _agents(tiny_models, *run)
    resumed.load_state_dict(checkpoint.loads(checkpoint.dumps(first.state_dict())))
    for t in range(12, 20):
        a, b = resumed.step(t), whole.step(t)
        assert a.contexts == b.contexts and a.responses == b.responses, t
    assert resumed.texts == whole.texts and torch.equal(resumed.entry_ref, whole.entry_ref)


def _fault_cli(run_dir, args, faults=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), RUN_DIR=str(run_dir), TQDM_DISABLE="1",
               TENSORSIM_FAULTS=json.dumps(faults or {}))
    return subprocess.run([sys.executable, "-m", "fault_inject", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)


def test_sigterm_after_a_compaction_then_resume_gives_identical_outputs(tiny_models, tmp_path):
    import tiny_models as tm

    args = [*tm.overrides(tiny_models), "trial=smoke", "trial.steps=15", "trial.window=3", "checkpoint.every=0",
            "trial.noise=0.3", "trial.noise_mode=swap"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    r = _fault_cli(whole, args)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _fault_cli(stopped, args, {"signal": ["TERM", 12]})  # the table was compacted after step 10
    assert r.returncode == 5, r.stderr[-2000:]
    state = checkpoint.loads((stopped / checkpoint.CHECKPOINT).read_bytes())
    assert state["t"] == 13 and len(state["agents"]["texts"]) < N * M + 13 * N
    r = _fault_cli(stopped, ["resume=true"])
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("metrics.csv", "agents.csv", "transcript.jsonl"):
        assert (stopped / f).read_bytes() == (whole / f).read_bytes(), f


Pops = namedtuple("Pops", "B replica cells type_names")


def test_table_estimate_sizes_rows_with_the_widest_numbers():
    pops = Pops(B=2, replica=torch.tensor([0, 1]), cells=[(5, 0.5)], type_names=("all",))
    names = ["rose", "sunflower"]
    est = table_bytes_estimate(pops, names, n=30, steps=80, t_end=80, text_bytes=250.0, agents=True)
    rows = 2 * 30 * 80
    assert csv_row_bytes([1, 79, 29, 1, "sunflower", 29, 0, "all", 0]) == len("1,79,29,1,sunflower,29,0,all,0\r\n")
    assert est["agents"] == rows * len("1,79,29,1,sunflower,29,0,all,0\r\n")
    frame = '{"replica": 1, "t": 79, "agent": 29, "context": "", "response": ""}\n'
    assert transcript_row_bytes(250.0, 1, 79, 29) == len(frame) + 250
    assert est["transcript"] == rows * (len(frame) + 250)
    assert table_bytes_estimate(pops, names, 30, 80, 80, None, agents=False) == {}


def test_a_run_whose_tables_do_not_fit_is_refused():
    est = {"agents": 2_000_000_000, "transcript": 5_000_000_000}
    with pytest.raises(UserError, match=r"about 7\.0 GB .* 1\.0 GB free: set output\.transcript=false or "
                                        r"output\.format=parquet"):
        check_room_for_tables("runs/x", est, 10, "csv", free=1_000_000_000)
    line = check_room_for_tables("runs/x", est, 10, "parquet", free=1_000_000_000)  # an upper bound only
    assert "transcript.jsonl ~5.0 GB" in line and "uncompressed" in line
    line = check_room_for_tables("runs/x", est, 10, "csv", free=8_000_000_000)
    assert line.startswith("[tensorsim] expected output size (an estimate") and "8.0 GB free" in line


def test_the_cli_announces_the_sizes_and_refuses_a_full_disk(tiny_models, tmp_path, monkeypatch):
    """The refusal comes before any model loads (no table is opened); a run that fits says how large it gets."""
    import tiny_models as tm

    import tensorsim.outputs as outputs
    from tensorsim.run import simulate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*tm.overrides(tiny_models), "trial=smoke",
                                                       "trial.steps=300", "output.plots=false"])
    real = shutil.disk_usage
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    with pytest.raises(UserError, match="output.transcript=false or output.format=parquet"):
        simulate(cfg, tmp_path / "full", hydra_subdir=None)
    assert not (tmp_path / "full" / "metrics.csv.partial").exists()
    r = run_cli(*tm.overrides(tiny_models), "trial=smoke", f"hydra.run.dir={tmp_path / 'fits'}")
    assert r.returncode == 0, r.stderr[-2000:]
    line, = [x for x in r.stdout.splitlines() if x.startswith("[tensorsim] expected output size")]
    assert "for 18 agent rows" in line and "agents.csv ~" in line and "transcript.jsonl ~" in line


def test_human_bytes():
    assert [human_bytes(x) for x in (512, 12_300, 4_560_000, 7_890_000_000)] == ["512 B", "12.3 kB", "4.6 MB",
                                                                                "7.9 GB"]
