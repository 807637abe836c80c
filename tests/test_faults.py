"""Fault injection (README "Runs that survive"): the smoke trial under each fault a cluster deals out, then
resumed; the outputs must equal an uninterrupted run's, and each fault's cost in steps run again is
recorded (printed with -s; written as JSON to $TENSORSIM_FAULTS_JSON when set).

The faults are injected at tensorsim's own seams by tests/fault_inject.py. GMM agents (no model to load)
run them: none of these faults depends on the agent kind. The LLM agents' checkpoint round trip is
tests/test_robustness.py's kill -9 test and test_checkpoint_format_round_trips_an_llm_state below.
"""
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from tensorsim import checkpoint
from tensorsim.errors import UserError

T, EVERY = 8, 3  # checkpoints at steps 3 and 6
RUN = ["trial=smoke", "agents=gmm", f"trial.steps={T}", "trial.window=3", f"checkpoint.every={EVERY}"]
OUTPUTS = ["metrics.csv", "agents.csv", "stability.png", "entropy.png", "silos.png"]
COSTS: dict[str, dict] = {}


def cli(run_dir, *args, faults=None, env=None):
    """One attempt through tests/fault_inject.py; -> (CompletedProcess, steps it started)."""
    log = run_dir.parent / f"{run_dir.name}.steps"
    log.unlink(missing_ok=True)
    full_env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), RUN_DIR=str(run_dir),
                    TENSORSIM_FAULTS=json.dumps(dict(faults or {}, steps_log=str(log))), **(env or {}))
    r = subprocess.run([sys.executable, "-m", "fault_inject", *RUN, *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=full_env)
    steps = [int(x) for x in log.read_text().split()] if log.exists() else []
    return r, steps


def errors(r) -> list[str]:
    """The lines tensorsim itself printed to stderr (tqdm's bar shares it) and no traceback."""
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    return [line for line in r.stderr.splitlines() if line.startswith(("error:", "stopped:"))]


def assert_same_outputs(run_dir, whole):
    for f in OUTPUTS:
        assert (run_dir / f).read_bytes() == (whole / f).read_bytes(), f
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, run_dir))
    b["config"]["overwrite"] = a["config"]["overwrite"]  # a run started again says overwrite=true
    for key in ("config", "replicas", "n", "steps", "populations"):
        assert a[key] == b[key], key
    leftovers = [p.name for p in run_dir.iterdir() if "checkpoint" in p.name or p.name.endswith(".partial")
                 or p.name == checkpoint.RUN_CONFIG]
    assert not leftovers, leftovers


def record(fault, attempts, note):
    """steps lost = steps run over every attempt - the run's steps."""
    run = sum(len(steps) for steps in attempts)
    COSTS[fault] = {"steps_run": run, "steps_lost": run - T, "note": note}
    return run - T


@pytest.fixture(scope="module", autouse=True)
def cost_table():
    yield
    if not COSTS:
        return
    print(f"\nfault cost, smoke trial with GMM agents, T={T}, checkpoint.every={EVERY}:")
    for fault, c in COSTS.items():
        print(f"  {fault:<48} {c['steps_lost']} step(s) lost   {c['note']}")
    out = os.environ.get("TENSORSIM_FAULTS_JSON")
    if out:
        sys.path.insert(0, str(ROOT / "bench"))
        from common import host  # the machine, as every figure in bench/results/ records it

        with open(out, "w") as f:
            json.dump({"test": "tests/test_faults.py", "trial": RUN, "steps": T, "checkpoint_every": EVERY,
                       "faults": COSTS, "host": host(torch.float32)}, f, indent=2)
            f.write("\n")


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    d = tmp_path_factory.mktemp("whole") / "run"
    r, steps = cli(d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert steps == list(range(T))  # the step log counts what it should
    return d


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped by SIGTERM in step 4, hit by SIGTERM again while it writes that checkpoint (write 2):
    -> (run directory, steps it ran, its stderr). Tests resume copies of it."""
    d = tmp_path_factory.mktemp("stopped") / "run"
    r, steps = cli(d, faults={"signal": ["TERM", 4], "signal_in_write": 2})
    assert r.returncode == 5, r.stderr[-2000:]
    return d, steps, r


def copy_of(stopped, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(stopped[0], d)
    return d, stopped[1]


def test_sigterm_in_a_step_finishes_it_checkpoints_and_stops(tmp_path, stopped, whole):
    line, = errors(stopped[2])
    assert "SIGTERM" in line and "checkpoint at step 5" in line
    assert f"python -m tensorsim resume=true hydra.run.dir={stopped[0].resolve()}" in line
    d, first = copy_of(stopped, tmp_path)
    assert first == list(range(5))
    # not the every-3 checkpoint: step 4's, intact although a second SIGTERM came during its write
    assert checkpoint.loads((d / checkpoint.CHECKPOINT).read_bytes())["t"] == 5
    assert not (d / (checkpoint.CHECKPOINT + ".tmp")).exists()
    r, second = cli(d, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_outputs(d, whole)
    assert record("SIGTERM in step 4 (again during the write)", [first, second],
                  "the step in progress is finished and checkpointed") == 0


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, whole):
    d = tmp_path / "run"
    r, first = cli(d, faults={"kill_in_write": 2})  # the write of the step-6 checkpoint
    assert r.returncode == -9
    assert checkpoint.loads((d / checkpoint.CHECKPOINT).read_bytes())["t"] == 3
    r, second = cli(d, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout and "at step 3" in r.stdout
    assert_same_outputs(d, whole)
    assert record("SIGKILL during the step-6 checkpoint write", [first, second],
                  "back to the previous checkpoint: checkpoint.every steps") == EVERY


def rows_before(path, t: int) -> int:
    """Bytes of a CSV table before its first row of step t (column t is the second)."""
    size = 0
    for i, line in enumerate(path.read_bytes().splitlines(keepends=True)):
        if i and int(line.split(b",")[1]) >= t:
            return size
        size += len(line)
    return size


def test_disk_full_in_a_table_write_rewinds_to_the_checkpoint(tmp_path, whole):
    d = tmp_path / "run"
    room = rows_before(whole / "agents.csv", 4) + 25  # the disk fills in the middle of step 4's rows
    r, first = cli(d, faults={"enospc_table": ["agents.csv", room]})
    assert r.returncode == 4, r.stderr[-2000:]
    line, = errors(r)
    assert "no space left" in line and ") in step 4;" in line and "checkpoint at step 3" in line
    assert "resume=true" in line
    assert checkpoint.loads((d / checkpoint.CHECKPOINT).read_bytes())["t"] == 3
    for table in ("agents.csv", "metrics.csv"):  # as they were at the checkpoint, ready to continue
        assert (d / (table + ".partial")).read_bytes() == (whole / table).read_bytes()[:rows_before(whole / table, 3)]
    assert not (d / "summary.json").exists()
    r, second = cli(d, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_outputs(d, whole)
    assert record("ENOSPC in agents.csv during step 4", [first, second],
                  "the steps since the last checkpoint") == 2


def test_disk_full_in_a_checkpoint_write_keeps_the_previous_one(tmp_path, whole):
    d = tmp_path / "run"
    r, first = cli(d, faults={"enospc_write": 2})
    assert r.returncode == 4, r.stderr[-2000:]
    line, = errors(r)
    assert "while writing the checkpoint at step 6; tables cut back to the checkpoint at step 3" in line
    assert checkpoint.loads((d / checkpoint.CHECKPOINT).read_bytes())["t"] == 3
    assert not (d / (checkpoint.CHECKPOINT + ".tmp")).exists()  # the half-written file is not left behind
    assert (d / "metrics.csv.partial").read_bytes() == (whole / "metrics.csv").read_bytes()[
        :rows_before(whole / "metrics.csv", 3)]
    r, second = cli(d, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_outputs(d, whole)
    assert record("ENOSPC during the step-6 checkpoint write", [first, second],
                  "back to the previous checkpoint") == EVERY


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (needs root; skipped where mount is not allowed)."""
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tensorsim-test", str(d)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_a_full_file_system_stops_the_run_and_resumes_once_space_is_freed(small_disk, whole):
    """A real full disk: the tmpfs is filled until 16 pages (64 KiB) are left. They hold the run's files and
    both copies of a checkpoint during its write, but not its plots: on this kernel the run fails while it
    writes its final outputs, the path the injected faults above do not take (tables already renamed)."""
    filler, d = small_disk / "filler", small_disk / "run"
    st = os.statvfs(small_disk)
    filler.write_bytes(bytes(st.f_bavail * st.f_frsize - 16 * 4096))
    r, first = cli(d)
    assert r.returncode == 4, r.stderr[-2000:]
    line, = errors(r)
    assert "no space left" in line and "resume=true" in line
    ckpt = checkpoint.loads((d / checkpoint.CHECKPOINT).read_bytes())  # intact
    for name, size in ckpt["offsets"][0].items():  # the tables as they were at that checkpoint
        assert (d / (name + ".partial")).stat().st_size == size, name
    assert not (d / "summary.json").exists() and not (d / "metrics.csv").exists()
    filler.unlink()
    r, second = cli(d, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_outputs(d, whole)
    where = line.split("; ")[0].split(") ")[-1]
    record(f"full tmpfs, {where}", [first, second], f"back to the checkpoint at step {ckpt['t']}")


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path, stopped, whole):
    d, first = copy_of(stopped, tmp_path)
    path = d / checkpoint.CHECKPOINT
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    damaged = path.read_bytes()
    r, refused = cli(d, "resume=true")
    assert r.returncode == 2 and not refused
    line, = errors(r)
    assert str(path) in line and "not a safetensors file" in line and "with overwrite=true instead of resume=true" in line
    assert path.read_bytes() == damaged  # left as it was
    r, _ = cli(d)  # a fresh run never silently deletes an unfinished run's checkpoint
    assert r.returncode == 2 and errors(r) == [f"error: run directory {d} holds an unfinished run "
                                               f"({checkpoint.CHECKPOINT}): continue it with resume=true, or start "
                                               f"it again with overwrite=true"]
    assert path.read_bytes() == damaged
    r, second = cli(d, "overwrite=true")  # what the message says: start again
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_outputs(d, whole)
    assert record("truncated checkpoint", [first, second], "no intact checkpoint: the run starts again") == 5


def test_a_checkpoint_from_a_different_n_is_refused_naming_it(tmp_path, stopped, whole):
    d, first = copy_of(stopped, tmp_path)
    other = tmp_path / "other"
    r, _ = cli(other, "trial.n=8", faults={"signal": ["TERM", 4]})
    assert r.returncode == 5
    own = (d / checkpoint.CHECKPOINT).read_bytes()
    tables = {p.name: p.read_bytes() for p in d.glob("*.partial")}
    shutil.copy(other / checkpoint.CHECKPOINT, d / checkpoint.CHECKPOINT)  # someone else's file
    r, refused = cli(d, "resume=true")
    assert r.returncode == 2 and not refused
    line, = errors(r)
    assert "another run" in line and "trial.n=8 in the checkpoint, 6 in this run directory" in line
    assert {p.name: p.read_bytes() for p in d.glob("*.partial")} == tables  # the refusal changed nothing
    (d / checkpoint.CHECKPOINT).write_bytes(own)
    # the directory is again byte for byte the one test_sigterm_... resumes to the uninterrupted outputs
    assert record("checkpoint from n=8 copied in", [first, refused, range(T - 5)],
                  "refused before any step; with its own checkpoint back the run resumes at step 5") == 0


def test_a_resume_command_that_contradicts_the_run_is_refused(tmp_path):
    from omegaconf import OmegaConf

    stored = {"trial": {"n": 6, "steps": 8}, "agents": {"kind": "gmm"}, "device": "auto", "seed": 0}
    asked = OmegaConf.create({"trial": {"n": 8, "steps": 8}, "agents": {"kind": "llm"}, "device": "cpu", "seed": 0})
    with pytest.raises(UserError, match=r"trial.n=6 in the checkpoint, 8 in the command"):
        checkpoint.check_same_run(tmp_path, stored, asked, ["resume=true", "trial.n=8"])
    with pytest.raises(UserError, match=r"agents.kind='gmm' in the checkpoint, 'llm' in the command"):
        checkpoint.check_same_run(tmp_path, stored, asked, ["agents=llm"])
    # what the command does not set, and where the run goes, are not compared
    checkpoint.check_same_run(tmp_path, stored, asked, ["resume=true", "device=cpu", "trial.steps=8",
                                                        "hydra.run.dir=x"])


def test_under_submitit_the_signal_requeues_and_the_rerun_resumes(tmp_path, whole):
    """submitit's own SignalHandler, bound as in a job of the local executor: after the checkpoint the run
    hands over to it, it dumps the resubmission (hydra-submitit-launcher's checkpoint(): the same command
    line) and requeues (exit 144); the rerun, without resume=true, continues the run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    from submitit.core.utils import DelayedSubmission
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    d, folder = tmp_path / "run", tmp_path / "submitit"
    r, first = cli(d, faults={"signal": ["USR1", 4], "submitit_job": str(folder)})
    assert r.returncode == LOCAL_REQUEUE_RETURN_CODE, r.stderr[-2000:]
    assert checkpoint.loads((d / checkpoint.CHECKPOINT).read_bytes())["t"] == 5
    resubmission = DelayedSubmission.load(folder / "4242_submitted.pkl")
    assert type(resubmission.function).__name__ == "LocalLauncher" and "resume=true" not in resubmission.args[0]
    assert resubmission.args[0][:len(RUN)] == RUN
    r, second = cli(d, env={"SUBMITIT_EXECUTOR": "local"})  # what the requeued job runs
    assert r.returncode == 0, r.stderr[-2000:]
    assert "requeued job (SUBMITIT_EXECUTOR=local): resuming" in r.stderr
    assert_same_outputs(d, whole)
    assert record("SIGUSR1 in step 4 under submitit, requeued", [first, second], "requeued; resumes by itself") == 0


def test_only_a_requeued_job_with_a_checkpoint_resumes_by_itself(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT).write_bytes(b"x")
    assert checkpoint.resumes_by_itself(tmp_path, {"SLURM_RESTART_COUNT": "2"}) == "SLURM_RESTART_COUNT=2"
    assert checkpoint.resumes_by_itself(tmp_path, {"SUBMITIT_EXECUTOR": "slurm"}) == "SUBMITIT_EXECUTOR=slurm"
    assert checkpoint.resumes_by_itself(tmp_path, {"SLURM_RESTART_COUNT": "0"}) is None  # first run of a job
    assert checkpoint.resumes_by_itself(tmp_path, {}) is None  # a shell: resume=true is the user's choice
    (tmp_path / checkpoint.CHECKPOINT).unlink()
    assert checkpoint.resumes_by_itself(tmp_path, {"SLURM_RESTART_COUNT": "1"}) is None  # nothing to resume


def test_checkpoint_format_round_trips_any_plain_state():
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    state = {
        "f64": base, "view": base[:, 1], "same_storage": base[0], "bf16": torch.randn(3, dtype=torch.bfloat16),
        "i64": torch.tensor([-(2**62), 2**62]), "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 5),
        "adapters": {"layers.0.lora_A": torch.randn(4, 2), "optimizer": {"step": 7, "exp_avg": [torch.ones(2)]}},
        "texts": ["The prettiest flower is the rose.", "ü ✿ \n\"quoted\"", ""],
        "plain": [1, 2.5, -0.0, float("nan"), float("inf"), True, None, "s", [], {}, 2**70],
        "$tensor": "a key that looks like a marker", "$items": [1], "raw": b"\x00\xffyaml", "no bytes": b"",
        "by_int": {0: "a", 7: [torch.ones(1)]}, "pair": (1, "x", None),
    }
    back = checkpoint.loads(checkpoint.dumps(state))
    assert set(back) == set(state)
    for key in ("f64", "view", "same_storage", "bf16", "i64", "bool", "empty"):
        assert back[key].dtype == state[key].dtype and torch.equal(back[key], state[key]), key
    assert torch.equal(back["adapters"]["layers.0.lora_A"], state["adapters"]["layers.0.lora_A"])
    assert back["adapters"]["optimizer"]["step"] == 7 and torch.equal(back["adapters"]["optimizer"]["exp_avg"][0],
                                                                       torch.ones(2))
    assert back["texts"] == state["texts"] and back["raw"] == state["raw"] and back["no bytes"] == b""
    assert back["$tensor"] == state["$tensor"] and back["$items"] == [1] and back["pair"] == (1, "x", None)
    assert set(back["by_int"]) == {0, 7} and back["by_int"][0] == "a"
    assert torch.equal(back["by_int"][7][0], torch.ones(1))
    p = back["plain"]
    assert p[:3] == [1, 2.5, -0.0] and str(p[2]) == "-0.0" and p[3] != p[3] and p[4] == float("inf")
    assert p[5:] == [True, None, "s", [], {}, 2**70] and p[5] is True


def test_checkpoint_format_round_trips_an_llm_state():
    """What LLMAgents.state_dict() holds: the text table and index tensors."""
    state = {"texts": [f"answer {i} ✿" for i in range(50)], "entry_ref": torch.randint(0, 50, (2, 6, 5)),
             "scores": torch.rand(2, 6, 5), "slots": torch.zeros(2, 6, 1, dtype=torch.int64)}
    back = checkpoint.loads(checkpoint.dumps(state))
    assert back["texts"] == state["texts"]
    for key in ("entry_ref", "scores", "slots"):
        assert back[key].dtype == state[key].dtype and torch.equal(back[key], state[key])


def test_checkpoint_format_round_trips_an_optimizer_state():
    """What LoRA agents will hold: adapters and torch.optim.AdamW's state_dict (int keys, tuple betas). The
    restored optimizer takes the same next step, bit for bit."""
    torch.manual_seed(0)
    lora = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(lora.parameters(), lr=0.1)
    lora(torch.randn(3, 4)).sum().backward()
    opt.step()
    state = {"adapters": {k: v.clone() for k, v in lora.state_dict().items()}, "optimizer": opt.state_dict()}
    back = checkpoint.loads(checkpoint.dumps(state))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(back["optimizer"]["state"]) == {0, 1}
    twin = torch.nn.Linear(4, 2)
    twin.load_state_dict(back["adapters"])
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.1)
    twin_opt.load_state_dict(back["optimizer"])
    x = torch.randn(3, 4)
    for model, o in ((lora, opt), (twin, twin_opt)):
        o.zero_grad()
        model(x).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(lora.parameters(), twin.parameters()))


@pytest.mark.parametrize("bad", [{True: 2}, {(1, 2): 3}, {"x": {1.5}}, {"x": object()}])
def test_only_plain_types_can_be_saved(bad):
    with pytest.raises(TypeError, match="not allowed|not a str or an int"):
        checkpoint.dumps(bad)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_an_old_pickle_checkpoint_cannot_run_code(tmp_path):
    """checkpoint.pt of earlier versions is read with weights_only=True: a pickle that would run code is refused."""
    with open(tmp_path / checkpoint.LEGACY_CHECKPOINT, "wb") as f:
        pickle.dump({"t": 2, "payload": RunsCode()}, f, protocol=2)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(UserError, match="weights_only=True") as e:
            checkpoint.load_checkpoint(tmp_path)
    finally:
        os.chdir(cwd)
    assert "\n" not in str(e.value) and not (tmp_path / "pwned").exists()


def test_an_old_plain_checkpoint_still_resumes(tmp_path):
    state = {"t": 2, "config": {"n": 6}, "agents": {"w": torch.ones(2)}, "history": torch.zeros(2, 1, 6),
             "S": torch.zeros(2, 1), "E": torch.zeros(2, 1), "silos": torch.zeros(2, 1), "new_tokens": 0,
             "generations": 0, "elapsed": 1.5, "offsets": [{"metrics.csv": 10}], "hydra_files": {"x.yaml": b"a"}}
    torch.save(state, tmp_path / checkpoint.LEGACY_CHECKPOINT)
    back = checkpoint.load_checkpoint(tmp_path)
    assert back["t"] == 2 and back["hydra_files"] == {"x.yaml": b"a"} and back["protocol"] == {}


def test_a_checkpoint_missing_an_entry_is_refused(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT).write_bytes(checkpoint.dumps({"t": 3, "config": {}}))
    with pytest.raises(UserError, match="entry 'agents' is missing"):
        checkpoint.load_checkpoint(tmp_path)


def test_disk_full_is_recognised_by_errno():
    from tensorsim.outputs import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "x")) and is_disk_full(OSError(errno.EDQUOT, "x"))
    assert not is_disk_full(OSError(errno.EACCES, "x")) and not is_disk_full(ValueError())


def test_agent_state_that_does_not_fit_is_refused():
    built = {"w": torch.zeros(1, 6, 6, dtype=torch.float64), "texts": ["a"], "opt": {"lr": torch.zeros(2)}}
    grown = {"w": torch.zeros(1, 6, 6, dtype=torch.float64), "texts": ["a", "b"], "opt": {"lr": torch.zeros(2)},
             "made_later": {"0": torch.ones(3)}}
    checkpoint.check_state_matches(built, grown)  # a longer text table and new entries are fine
    with pytest.raises(UserError, match=r"agents.w is \(1, 8, 8\) torch.float64, this run's agents hold \(1, 6, 6\)"):
        checkpoint.check_state_matches(built, dict(grown, w=torch.zeros(1, 8, 8, dtype=torch.float64)))
    with pytest.raises(UserError, match=r"agents.opt lacks \['lr'\]"):
        checkpoint.check_state_matches(built, dict(grown, opt={}))


def test_rewind_after_the_tables_were_renamed_into_place(tmp_path):
    """A disk that fills after a cell was completed (a later cell, or the run's summary.json): its tables go
    back to their .partial names, cut to the checkpoint, and its summary.json is removed."""
    from tensorsim.outputs import SUMMARY, CellWriter

    w = CellWriter(tmp_path, [0], [0], ["a", "b"], None, transcript=False)
    labels, partner, mirrored = torch.tensor([[0, 1]]), torch.tensor([[1, 0]]), torch.tensor([[0, 1]])

    def step(t):
        w.write_step(t, labels, partner, mirrored, None if t == 0 else torch.ones(1), torch.zeros(1),
                     torch.ones(1, dtype=torch.int64), None, None, 2)

    step(0)
    offsets = w.tell()  # the checkpoint
    step(1)
    w.close({"complete": True})
    assert (tmp_path / "agents.csv").exists() and (tmp_path / SUMMARY).exists()
    w.rewind(offsets)
    assert not (tmp_path / SUMMARY).exists() and not (tmp_path / "agents.csv").exists()
    for name, size in offsets.items():
        assert (tmp_path / (name + ".partial")).stat().st_size == size
    w = CellWriter(tmp_path, [0], [0], ["a", "b"], None, transcript=False, offsets=offsets)  # resume
    step(1)
    w.close({"complete": True})
    assert [line.split(",")[1] for line in (tmp_path / "metrics.csv").read_text().splitlines()] == ["t", "0", "1"]


def test_a_per_step_history_may_grow_but_keeps_its_other_dimensions():
    built = {"drift": torch.zeros(0, 2, 3, dtype=torch.float64), "w": torch.zeros(2, 3)}
    checkpoint.check_state_matches(built, {"drift": torch.zeros(5, 2, 3, dtype=torch.float64), "w": torch.ones(2, 3)})
    with pytest.raises(UserError, match=r"agents\.drift is \(5, 2, 4\) torch.float64, this run's agents hold "
                                        r"\(0, 2, 3\)"):
        checkpoint.check_state_matches(built, {"drift": torch.zeros(5, 2, 4, dtype=torch.float64), "w": torch.ones(2, 3)})
    with pytest.raises(UserError, match=r"agents\.w is \(3, 3\)"):  # a fixed-size tensor must match exactly
        checkpoint.check_state_matches(built, {"drift": torch.zeros(1, 2, 3, dtype=torch.float64), "w": torch.ones(3, 3)})
