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
