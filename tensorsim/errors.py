"""Errors the CLI turns into one line and an exit status, and the check every validator uses."""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


class NonFiniteError(Exception):
    """NaN or inf in logits or embeddings: the run stops (the last checkpoint is kept)."""


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def need(cond: bool, key: str, value, allowed: str) -> None:
    """Config validation: unless cond, stop with `key=value is not allowed: allowed`."""
    if not cond:
        raise UserError(f"{key}={value!r} is not allowed: {allowed}")


class DiskFullError(Exception):
    """A table or checkpoint write found no room (ENOSPC, EDQUOT): exit status 4, with the last good
    checkpoint kept and the tables cut back to it, so that resume=true continues once space is freed."""

    def __init__(self, message: str, resumable: bool):
        super().__init__(message)
        self.resumable = resumable


class Preempted(Exception):
    """A stop signal (SLURM's preemption or time-limit warning) ended the run at a step boundary, after a
    checkpoint of that step: exit status 5 and the command that resumes it."""

    def __init__(self, signal_name: str, step: int, run_dir):
        super().__init__(f"{signal_name} received: stopped after step {step - 1} with a checkpoint at step {step}")
        self.signal_name, self.step, self.run_dir = signal_name, step, run_dir
