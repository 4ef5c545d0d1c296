"""One exception type for every mistake minift can explain.

Anything a user can get wrong (a file, an option, an array's shape) is reported as a `MiniftError` whose message names
the input and what was expected. The CLI prints that message as one line and exits non-zero; library callers can catch
it (it is a `ValueError`, so `except ValueError` works too).
"""


class MiniftError(ValueError):
    """A clear, user-facing error: the message names the bad input and what was expected."""
