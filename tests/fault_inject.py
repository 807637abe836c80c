"""`python -m fault_inject [overrides]` (with tests/ on PYTHONPATH): `python -m tensorsim` with faults
injected at tensorsim's own seams, as named in TENSORSIM_FAULTS (JSON):

  steps_log: path      every step an agent population starts is appended to this file (steps lost = steps
                       run over all attempts - steps of the run)
  signal: [name, t]    send the signal to this process at the start of step t
  signal_in_write: n   send SIGTERM again during checkpoint write number n (a second signal mid-write)
  kill_in_write: n     checkpoint write number n writes half its bytes, then the process gets SIGKILL
  enospc_write: n      checkpoint write number n writes half its bytes, then fails with ENOSPC
  enospc_table: [name, bytes]  the table `name` (e.g. agents.csv) fails with ENOSPC once it would pass
                       `bytes` bytes in this process (what fits is written first, as a full disk does)
  submitit_job: folder  before the run, do what submitit does when a job of hydra-submitit-launcher's
                       local executor starts: bind submitit's own SignalHandler for this command line
                       (its USR2 handler checkpoints the submission into `folder` and requeues: exit 144)
"""
import errno
import json
import os
import runpy
import signal
import sys
import types
from pathlib import Path

import tensorsim.checkpoint as checkpoint
import tensorsim.outputs as outputs
import tensorsim.run as run

FAULTS = json.loads(os.environ.get("TENSORSIM_FAULTS", "{}"))


def on_step(t: int) -> None:
    if FAULTS.get("steps_log"):
        with open(FAULTS["steps_log"], "a") as f:
            f.write(f"{t}\n")
    if FAULTS.get("signal") and FAULTS["signal"][1] == t:
        os.kill(os.getpid(), getattr(signal, "SIG" + FAULTS["signal"][0]))


def wrap_kind_module(real):
    """Every agent kind's build, with its agents' step() announcing each step first."""
    def kind_module(kind):
        mod = real(kind)
        wrapped = types.SimpleNamespace(**{k: getattr(mod, k) for k in dir(mod) if not k.startswith("__")})

        def build(*args, **kwargs):
            agents, names, used = mod.build(*args, **kwargs)
            step = agents.step

            def announced(t):
                on_step(t)
                return step(t)

            agents.step = announced
            return agents, names, used

        wrapped.build = build
        return wrapped
    return kind_module


def wrap_checkpoint_write(real):
    calls = [0]

    def write(path: Path, data: bytes) -> None:
        calls[0] += 1
        if FAULTS.get("signal_in_write") == calls[0]:
            os.kill(os.getpid(), signal.SIGTERM)
        if calls[0] in (FAULTS.get("kill_in_write"), FAULTS.get("enospc_write")):
            Path(path).write_bytes(data[:len(data) // 2])
            if FAULTS.get("kill_in_write") == calls[0]:
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)
    return write


class FillingFile:
    """A table file on a disk with `room` bytes left."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, s: str) -> int:
        if len(s.encode("utf-8")) > self._room:
            self._f.write(s.encode("utf-8")[:self._room].decode("utf-8", "ignore"))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(s.encode("utf-8"))
        return self._f.write(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._f, name)


def wrap_open_table(real):
    name, room = FAULTS["enospc_table"]

    def open_table(path: Path, mode: str):
        f = real(path, mode)
        return FillingFile(f, room) if Path(path).name.startswith(name) else f
    return open_table


def install_submitit_job(folder: str) -> None:
    """submitit.core.submission.process_job's signal set-up for a job whose submission is
    hydra-submitit-launcher's LocalLauncher called with this command's overrides."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
    from submitit.core.utils import DelayedSubmission, JobPaths
    from submitit.local.local import LocalJobEnvironment

    os.environ.update(SUBMITIT_LOCAL_JOB_ID="4242", SUBMITIT_LOCAL_NTASKS="1", SUBMITIT_LOCAL_JOB_NUM_NODES="1",
                      SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_GLOBALID="0", SUBMITIT_LOCAL_LOCALID="0")
    Path(folder).mkdir(parents=True, exist_ok=True)
    delayed = DelayedSubmission(LocalLauncher(timeout_min=60), sys.argv[1:], "hydra.sweep.dir", 0, "4242", {})
    delayed.set_timeout(60, 3)
    LocalJobEnvironment()._handle_signals(JobPaths(folder, job_id="4242"), delayed)


run.kind_module = wrap_kind_module(run.kind_module)
checkpoint.write_bytes_durably = wrap_checkpoint_write(checkpoint.write_bytes_durably)
if FAULTS.get("enospc_table"):
    outputs.open_table = wrap_open_table(outputs.open_table)
if FAULTS.get("submitit_job"):
    install_submitit_job(FAULTS["submitit_job"])

if __name__ == "__main__":
    sys.argv = ["tensorsim"] + sys.argv[1:]
    runpy.run_module("tensorsim", run_name="__main__", alter_sys=True)
