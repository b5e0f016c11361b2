"""The one exception family medkd reports as bad input: a one-line message naming the file or key and
the problem, exit code 2, no traceback. Everything else (a bug) propagates with its traceback."""


class InputError(ValueError):
    """Bad input from the user: a config, a dataset file, a download, a command-line argument.

    Subclasses ValueError so callers that validated with ``except ValueError`` keep working.
    """
