"""One exception type for every user-facing problem: the CLI prints its message on one line."""


class UsclfError(Exception):
    """A problem with the user's input (data, config, checkpoint) - shown as one clear line, no traceback."""


def run_reporting(prog: str, fn) -> int:
    """Call `fn()`; a UsclfError becomes `PROG: error: ...` on stderr and exit 2, Ctrl-C exit 130, else
    `fn`'s return value (None is 0). Every command and study goes through here."""
    import sys

    try:
        return int(fn() or 0)
    except UsclfError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
