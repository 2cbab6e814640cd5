"""How much one ingest may read and write: ``IngestLimits``, and the byte budget it sets for a staging folder
(the smallest of a fixed cap, a share of the free disk and, for an archive, a compression ratio past a floor)."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass

_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestLimits:
    max_members: int = 200_000                  # files in an archive / folder / rows in a CSV
    # Bytes one ingest may write (uncompressed, counted while reading). A fixed cap: what is enforced is
    # total_budget(), this or less: disk_share of the free disk, and for an archive max_ratio times its size.
    max_total_bytes: int = 8 * 1024**3
    max_file_bytes: int = 100 * 1024**2         # one file, counted while reading
    max_image_pixels: int = 89_478_485          # width * height; Pillow's own default bomb limit
    # Uncompressed / compressed bytes, for each member and for the whole archive, checked only past a floor
    # of output (_RATIO_FLOOR_MEMBER, _RATIO_FLOOR_TOTAL). Images are mostly compressed already (a zipped
    # PNG or JPEG is about 1:1); deflate itself cannot exceed ~1032:1, which zeros reach.
    max_ratio: float = 200.0
    # A stream (tar.gz, tar.bz2, tar.xz) must be decompressed to step over a member that is refused or not
    # read; past this many such bytes the archive is refused instead of decompressed to its end.
    max_skipped_bytes: int = 64 * 1024**2
    disk_share: float = 0.5                     # of the free space on the disk the dataset is staged on

    def total_budget(self, folder: str | os.PathLike, archive_bytes: int | None = None) -> int:
        """The bytes an ingest staged in ``folder`` may write: the smallest of ``max_total_bytes``,
        ``disk_share`` of the folder's free disk space now, and (an archive of ``archive_bytes``)
        ``max_ratio`` times its size (but not under the ratio's floor)."""
        return _total_budget(self, folder, archive_bytes)[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IngestLimits:
        return cls(**d)


# The compression ratio is checked only past a floor of output: small files legitimately compress far
# more than max_ratio (a 256x256 one-colour BMP is 196 KB, deflated to 249 bytes: 790:1), and below the
# floors a "bomb" can do no harm. A member is checked after 1 MB of its output, the archive after 10 MB.
_RATIO_FLOOR_MEMBER = 1 << 20
_RATIO_FLOOR_TOTAL = 10 << 20


def _free_bytes(folder: str | os.PathLike) -> int:
    return shutil.disk_usage(folder).free


def _total_budget(limits: IngestLimits, folder: str | os.PathLike, archive_bytes: int | None = None
                  ) -> tuple[int, str]:
    """``IngestLimits.total_budget``, and for a refusal message which bound set it and what to do."""
    free = _free_bytes(folder)
    bounds = [(limits.max_total_bytes, "a zip bomb?", "raise IngestLimits.max_total_bytes if the data is "
               "genuine"),
              (int(free * limits.disk_share), f"{limits.disk_share:.0%} of the {free} bytes free on the disk "
               f"holding {folder}", "free disk space there, or raise IngestLimits.disk_share")]
    if archive_bytes is not None:
        ratio_cap = _ratio_cap(limits.max_ratio, archive_bytes, _RATIO_FLOOR_TOTAL)
        bounds.append((int(min(ratio_cap, 2**62)), f"{limits.max_ratio:g} times the archive's {archive_bytes} "
                       "bytes: a compression bomb?", "raise IngestLimits.max_ratio if the data is genuine"))
    cap, reason, advice = min(bounds, key=lambda b: b[0])
    return cap, f"({reason}); {advice}"


def _ratio_cap(max_ratio: float, packed: int, floor: int) -> float:
    """Output allowed for ``packed`` compressed bytes: ``max_ratio`` times as much, never under ``floor``."""
    return max(floor, max_ratio * packed)
