class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


class NonFiniteError(Exception):
    """NaN or inf in logits or embeddings: the run stops (the last checkpoint is kept)."""
