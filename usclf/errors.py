"""One exception type for every user-facing problem: the CLI prints its message on one line."""


class UsclfError(Exception):
    """A problem with the user's input (data, config, checkpoint) - shown as one clear line, no traceback."""
