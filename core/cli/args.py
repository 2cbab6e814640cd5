"""The command line's one argument parser: argparse that raises instead of exiting."""
from __future__ import annotations

import argparse
from core.errors import StudioError


class UsageError(StudioError):
    """Bad command-line usage; the message holds the usage line. Each command's main turns it into exit 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so a command's main decides its own exit code
    (audit's 2 means "blocked"; bad usage must not exit before main can say so)."""

    def error(self, message: str):
        raise UsageError(f"{self.format_usage()}{self.prog}: error: {message}")
