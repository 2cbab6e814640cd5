"""What a failed training run says: a message a person can act on, for the failures people actually meet
(``core.train.loop``'s ``Trainer.run`` emits it in ``Failed`` and raises ``TrainingFailed`` with it).
"""
from __future__ import annotations

from PIL import UnidentifiedImageError

from core.data.ingest import ImageError
from core.files import DiskFull
from core.model.checkpoint import CheckpointError
from core.train.failures import TrainingFailed
from core.train.memory import is_out_of_memory


def explain(exc: BaseException) -> str:
    """A message a person can act on, for the failures people actually meet."""
    if isinstance(exc, TrainingFailed):
        return str(exc)
    if isinstance(exc, (DiskFull, CheckpointError)):
        return str(exc)
    if is_out_of_memory(exc):
        return (f"out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Lower batch_size, "
                "raise freeze_ratio, or set image_size smaller.")
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return f"could not read {exc.filename}: {exc.strerror or exc}. Remove or replace the file and resume."
    if isinstance(exc, (UnidentifiedImageError, ImageError)):
        return f"an image could not be decoded ({exc}). Run `python -m core audit` on the data and fix the file."
    return str(exc) or type(exc).__name__
