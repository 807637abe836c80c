class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""
