"""What ingestion produces and every later stage reads: the records ``Sample``, ``Skipped``, ``Dataset`` and
``ImageProbe``, the errors ``IngestError`` (a whole source refused) and ``ImageError`` (one file refused),
and the file suffixes an upload may carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import StudioError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


class IngestError(StudioError, ValueError):
    """The whole source was refused (missing, unsupported, over a limit, or holding no images)."""


class ImageError(StudioError, ValueError):
    """One file could not be used as an image; ``code`` says why (see ``Skipped.code``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Sample:
    path: str            # relative to Dataset.root, "/"-separated
    label: str
    split: str | None    # "train" | "val" | "test" when the source gave one, else None
    sha256: str          # of the file bytes
    group: str | None = None  # e.g. a patient id from a CSV "group" column; kept in one split

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        return cls(path=d["path"], label=d["label"], split=d.get("split"), sha256=d["sha256"],
                   group=d.get("group"))


@dataclass(frozen=True)
class Skipped:
    path: str    # as named in the source (archive member, relative file path, CSV row)
    code: str    # hidden | empty_file | not_image | corrupt | truncated | pixel_bomb | too_large |
                 # compression_bomb | unsafe_path | link | special_file | encrypted | duplicate_entry |
                 # outside_class_folder | not_split_folder | bad_row | missing_file | escapes_root
    reason: str  # what was wrong and what to do

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Skipped:
        return cls(path=d["path"], code=d["code"], reason=d["reason"])


@dataclass(frozen=True)
class Dataset:
    dataset_id: str                    # sha256 prefix over (path, content sha256, label, split, group)
    root: str                          # absolute folder holding the files; Sample.path is relative to it
    samples: tuple[Sample, ...]        # sorted by path
    skipped: tuple[Skipped, ...] = ()
    layout: str = "classes"            # "classes" | "splits" | "csv"
    source: str = ""                   # file or folder name it came from (informational)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({s.label for s in self.samples}))

    @property
    def has_given_splits(self) -> bool:
        return any(s.split is not None for s in self.samples)

    def path_of(self, sample: Sample) -> Path:
        return Path(self.root, *sample.path.split("/"))

    def to_dict(self) -> dict:
        return {"dataset_id": self.dataset_id, "root": self.root, "layout": self.layout,
                "source": self.source, "samples": [s.to_dict() for s in self.samples],
                "skipped": [s.to_dict() for s in self.skipped]}

    @classmethod
    def from_dict(cls, d: dict) -> Dataset:
        return cls(dataset_id=d["dataset_id"], root=d["root"],
                   samples=tuple(Sample.from_dict(s) for s in d["samples"]),
                   skipped=tuple(Skipped.from_dict(s) for s in d.get("skipped", ())),
                   layout=d.get("layout", "classes"), source=d.get("source", ""))


@dataclass(frozen=True)
class ImageProbe:
    """What one decode of a file tells the audit; computed once at ingestion."""
    width: int                     # after EXIF transpose, i.e. what the model sees
    height: int
    mode: str                      # Pillow mode of the file before conversion to RGB
    format: str                    # PNG, JPEG, ...
    orientation: int               # EXIF orientation tag, 1 when absent
    phash: int                     # 64-bit DCT perceptual hash
    channel_sum: tuple[float, float, float]    # sums of RGB values in [0, 1] ...
    channel_sqsum: tuple[float, float, float]  # ... and of their squares ...
    pixel_count: int                           # ... over this many pixels (after downscaling)

    def to_list(self) -> list:
        return [self.width, self.height, self.mode, self.format, self.orientation,
                format(self.phash, "016x"), *self.channel_sum, *self.channel_sqsum, self.pixel_count]

    @classmethod
    def from_list(cls, v: list) -> ImageProbe:
        return cls(width=v[0], height=v[1], mode=v[2], format=v[3], orientation=v[4],
                   phash=int(v[5], 16), channel_sum=tuple(v[6:9]), channel_sqsum=tuple(v[9:12]),
                   pixel_count=v[12])
