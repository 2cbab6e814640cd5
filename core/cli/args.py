"""The command line's one argument parser (argparse that raises instead of exiting) and its one mapping from
errors to messages and exit codes: a `StudioError` (bad input, missing data, a refused action) or an OS error
(a missing or unreadable file) is the user's to fix and exits 2 with "error: ..." on stderr; anything else is a
bug and keeps its traceback.

Each command imports its stage inside the command, so `python -m core models` does not load the training loop.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from core.errors import StudioError

USER_ERRORS = (StudioError, OSError, json.JSONDecodeError)  # what exits 2 with a message, not a traceback


class UsageError(StudioError):
    """Bad command-line usage; the message holds the usage line. Each command's main turns it into exit 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so a command's main decides its own exit code
    (audit's 2 means "blocked"; bad usage must not exit before main can say so)."""

    def error(self, message: str):
        raise UsageError(f"{self.format_usage()}{self.prog}: error: {message}")


def guarded(body: Callable[[], int]) -> int:
    """`body()`'s exit code, or: bad usage -> its message on stderr and 2; --help -> 0; a user's error (StudioError,
    OSError) -> `user_error` (2). The commands whose usage errors print no JSON line run through it."""
    try:
        return body()
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except USER_ERRORS as exc:
        return user_error(exc)


def user_error(exc: BaseException, json_line: bool = True, code: int = 2) -> int:
    """Say what went wrong on stderr (and as the JSON last line scripts read); the exit code to return."""
    print(f"error: {exc}", file=sys.stderr)
    if json_line:
        print(json.dumps({"status": "error", "error": str(exc)}))
    return code
