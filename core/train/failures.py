"""TrainingFailed: the error a training run ends with when it cannot go on, its message saying why and what
to try (core.train.loop and core.train.memory raise it; the CLIs report it).
"""
from __future__ import annotations

from core.errors import StudioError


class TrainingFailed(StudioError, RuntimeError):
    """The run cannot go on (NaN loss, out of memory, ...); the message says why and what to try."""
