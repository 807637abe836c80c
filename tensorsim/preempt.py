"""Stopping at a step boundary when a scheduler asks.

SLURM sends SIGTERM when it preempts a job (and SIGKILL after the partition's GraceTime), and the signal of
`--signal=SIG@seconds` that long before the time limit; submitit binds its own requeue signal
(SUBMITIT_PREEMPT_SIGNAL, USR2 unless set) to "checkpoint the submission and requeue the job". While a run
steps, all of these only set a flag: the step in progress finishes, the run writes a checkpoint, and then
either hands over to the handler a job manager installed before it (submitit: requeue; the requeued job
sees its checkpoint and resumes, tensorsim.checkpoint.resumes_by_itself) or stops with exit status 5 and
the resume command. A handler that only sets a flag cannot interrupt a checkpoint write, so a second
signal during it changes nothing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def requeue_signal() -> signal.Signals:
    """The signal submitit binds to checkpoint-and-requeue inside a job (read as submitit reads it)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


class StopRequests:
    """Context manager: while inside, the stop signals are noted instead of ending the process."""

    def __init__(self):
        self.signum: int | None = None
        self.count = 0
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            for s in dict.fromkeys((*STOP_SIGNALS, requeue_signal())):
                self.previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _note(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def job_manager(self):
        """The Python handler bound to the requeue signal before the run (submitit's
        checkpoint_and_try_requeue inside a submitit job), or None when run from a shell."""
        handler = self.previous.get(requeue_signal())
        return handler if callable(handler) else None

    def hand_over(self) -> None:
        """After the checkpoint is written: let the job manager requeue the job. submitit's handler dumps
        the job's submission again, runs `scontrol requeue` (the local executor: exit 144) and exits."""
        handler = self.job_manager()
        if handler is None:
            return
        self.__exit__()
        try:
            handler(requeue_signal(), None)
        except (OSError, subprocess.SubprocessError) as e:  # scontrol failed: the job stops, resumable by hand
            print(f"[tensorsim] the job manager could not requeue this job ({type(e).__name__}: {e})",
                  file=sys.stderr)
