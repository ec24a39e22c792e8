"""The launcher's input error (a one-line message; the CLI prints it and exits 2)."""


class UsageError(Exception):
    """Bad input: the launcher prints the message on one line and exits with status 2."""
