"""The one root of every error a user can cause or fix: bad input, missing data, a refused action.

Every user-facing error subclasses `StudioError` (and keeps its builtin base, so older `except ValueError`
callers still work). A caller that shows messages catches `StudioError`; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations


class StudioError(Exception):
    """Something the user can act on; the message says what happened and what to do."""
