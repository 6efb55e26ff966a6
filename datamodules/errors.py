"""The one error type for bad input: a wrong config, an empty or malformed corpus, a missing package.

Command-line entry points catch it, print its single-line message and exit with code 2, so a user
never sees a traceback for a mistake that is theirs to fix.
"""
import sys
from contextlib import contextmanager


class UsageError(ValueError):
    """A problem with the user's input; the message names the problem and the fix."""


@contextmanager
def exit_on_usage_error():
    """Turn a UsageError into `error: <message>` on stderr and exit code 2."""
    try:
        yield
    except UsageError as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def require(problems: list[str], what: str) -> None:
    """Raise one UsageError that lists every problem found while validating `what`."""
    if problems:
        raise UsageError(f"invalid {what}: " + "; ".join(problems))
