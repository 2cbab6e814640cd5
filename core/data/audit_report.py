"""What an audit returns: ``AuditReport`` (counts, sizes, colour modes, channel statistics, duplicate groups)
and its ``Finding``s, each with a severity ("error" blocks training), the files involved and a fix; as dicts
for JSON and as plain text for a terminal (``format_report``); and the tables of what findings say about
colour modes (``MODE_HANDLING``) and ingestion refusals (``SKIP_FINDINGS``). ``core.data.audit`` makes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEVERITIES = ("error", "warning", "info")

# What the training pipeline (core.data.images.load_rgb) does with each colour mode.
MODE_HANDLING = {
    "L": "greyscale: copied into all three RGB channels",
    "1": "black-and-white: expanded to RGB (0 or 255)",
    "P": "palette: expanded to RGB (transparent entries composited on white)",
    "PA": "palette with alpha: alpha composited on white, then RGB",
    "RGBA": "alpha channel composited on a white background, then RGB",
    "LA": "greyscale with alpha: composited on white, then RGB",
    "CMYK": "converted to RGB with Pillow's plain formula (ICC profiles are ignored, so colours may "
            "shift; export as RGB for exact colours)",
    "I;16": "16-bit: scaled to 8 bits (value / 257), the full range is kept, nothing is clipped",
    "I;16B": "16-bit: scaled to 8 bits (value / 257), the full range is kept, nothing is clipped",
    "I;16L": "16-bit: scaled to 8 bits (value / 257), the full range is kept, nothing is clipped",
    "I": "32-bit integer: 0..65535 data scaled by 1/257, other ranges stretched to 0..255",
    "F": "floating point: 0..1 data scaled to 0..255, other ranges stretched to 0..255",
    "YCbCr": "converted to RGB",
}

# How ingestion refusals (Skipped.code) are reported: code -> (severity, finding code, what, fix).
SKIP_FINDINGS = {
    "corrupt": ("warning", "corrupt_files", "corrupt files that could not be decoded were excluded",
                "Re-export them from the original source, or delete them."),
    "truncated": ("warning", "truncated_files", "truncated images (incomplete data) were excluded",
                  "Copy them again from the original source; the download was probably cut off."),
    "empty_file": ("warning", "empty_files", "empty (0-byte) files were excluded",
                   "Delete them or copy them again from the original source."),
    "unreadable": ("warning", "unreadable_files", "files that could not be read were excluded",
                   "Check their permissions and copy them again."),
    "unsupported_mode": ("warning", "unsupported_mode", "images in a colour mode that can't be "
                         "converted to RGB were excluded", "Export them as RGB PNG or JPEG."),
    "not_image": ("info", "non_image_files", "files that are not images were ignored",
                  "Nothing to do, or remove them from the class folders."),
    "hidden": ("info", "hidden_entries", "hidden or system entries (.DS_Store, __MACOSX/, "
               "Thumbs.db, dot-files) were skipped", "Nothing to do."),
    "pixel_bomb": ("warning", "oversized_images", "images declaring more pixels than allowed were "
                   "refused (decompression-bomb guard)", "Resize them, or raise "
                   "IngestLimits.max_image_pixels if they are genuine."),
    "too_large": ("warning", "oversized_files", "files over the per-file size limit were refused",
                  "Shrink them, or raise IngestLimits.max_file_bytes if they are genuine."),
    "unsafe_path": ("warning", "unsafe_entries", "archive entries with unsafe names (../, absolute "
                    "paths, drive letters, backslashes) were refused", "Re-create the archive from "
                    "the dataset folder itself (e.g. `zip -r data.zip DATA`)."),
    "escapes_root": ("warning", "unsafe_entries", "CSV paths pointing outside the image root were "
                     "refused", "Make every CSV path relative to the image root, without '..'."),
    "link": ("warning", "links_refused", "symbolic and hard links were refused",
             "Replace links with the real files."),
    "special_file": ("warning", "special_files", "device files, pipes and other non-regular "
                     "entries were refused", "Remove them from the archive."),
    "encrypted": ("warning", "encrypted_entries", "password-protected archive entries were refused",
                  "Re-create the archive without a password."),
    "duplicate_entry": ("warning", "duplicate_entries", "archive entries repeating an earlier name "
                        "were refused", "Re-create the archive so every name appears once."),
    "outside_class_folder": ("info", "outside_class_folder", "files outside any class folder were "
                             "ignored", "Move them into DATA/<class>/ to use them."),
    "not_split_folder": ("info", "not_split_folder", "folders beside train/ other than val/ and "
                         "test/ were ignored", "Move their classes into train/, val/ or test/."),
    "bad_row": ("warning", "csv_bad_rows", "CSV rows with an empty path or label, an unknown split "
                "or a conflicting repeat were skipped", "Fix those rows in the CSV."),
    "missing_file": ("warning", "csv_missing_files", "CSV rows naming files that don't exist were "
                     "skipped", "Fix the paths, or pass the right image root."),
}


@dataclass(frozen=True)
class Finding:
    severity: str                              # "error" (blocks training) | "warning" | "info"
    code: str                                  # stable identifier, e.g. "split_leakage"
    message: str                               # what is wrong, with counts
    files: tuple[str, ...] = ()                # dataset-relative paths (first MAX_LISTED)
    fix: str = ""                              # what to do about it
    pairs: tuple[tuple[str, str], ...] = ()    # duplicate pairs (first MAX_LISTED)

    def to_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "message": self.message,
                "files": list(self.files), "fix": self.fix, "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        return cls(d["severity"], d["code"], d["message"], tuple(d.get("files", ())), d.get("fix", ""),
                   tuple(tuple(p) for p in d.get("pairs", ())))


@dataclass(frozen=True)
class SizeStats:
    min_width: int
    min_height: int
    median_width: float
    median_height: float
    max_width: int
    max_height: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SizeStats:
        return cls(**d)


@dataclass(frozen=True)
class ChannelStats:
    mean: tuple[float, float, float]   # RGB, on the 0..1 scale the model normalisation uses
    std: tuple[float, float, float]
    images: int                        # how many images they were computed over
    split: str                         # "train", or "all" when the data has no split yet

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "images": self.images, "split": self.split}

    @classmethod
    def from_dict(cls, d: dict) -> ChannelStats:
        return cls(tuple(d["mean"]), tuple(d["std"]), d["images"], d["split"])


@dataclass(frozen=True)
class AuditReport:
    dataset_id: str
    root: str
    num_images: int
    class_counts: dict[str, int]                   # label -> images
    split_counts: dict[str, dict[str, int]]        # "train"/"val"/"test"/"unsplit" -> label -> images
    imbalance_ratio: float                         # largest class / smallest class
    sizes: SizeStats
    mode_counts: dict[str, int]                    # Pillow mode of the files -> images
    data_stats: ChannelStats
    model_mean: tuple[float, float, float]
    model_std: tuple[float, float, float]
    min_size: int                                  # the model input size images were compared to
    near_duplicate_distance: int
    duplicate_groups: tuple[tuple[str, ...], ...]  # exact + near duplicates; feed to split_dataset
    findings: tuple[Finding, ...]                  # errors first

    @property
    def blocks_training(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def to_dict(self) -> dict:
        return {"dataset_id": self.dataset_id, "root": self.root, "num_images": self.num_images,
                "class_counts": dict(self.class_counts),
                "split_counts": {k: dict(v) for k, v in self.split_counts.items()},
                "imbalance_ratio": self.imbalance_ratio, "sizes": self.sizes.to_dict(),
                "mode_counts": dict(self.mode_counts), "data_stats": self.data_stats.to_dict(),
                "model_mean": list(self.model_mean), "model_std": list(self.model_std),
                "min_size": self.min_size, "near_duplicate_distance": self.near_duplicate_distance,
                "duplicate_groups": [list(g) for g in self.duplicate_groups],
                "findings": [f.to_dict() for f in self.findings],
                "blocks_training": self.blocks_training}

    @classmethod
    def from_dict(cls, d: dict) -> AuditReport:
        return cls(dataset_id=d["dataset_id"], root=d["root"], num_images=d["num_images"],
                   class_counts=dict(d["class_counts"]), split_counts=d["split_counts"],
                   imbalance_ratio=d["imbalance_ratio"], sizes=SizeStats.from_dict(d["sizes"]),
                   mode_counts=dict(d["mode_counts"]), data_stats=ChannelStats.from_dict(d["data_stats"]),
                   model_mean=tuple(d["model_mean"]), model_std=tuple(d["model_std"]),
                   min_size=d["min_size"], near_duplicate_distance=d["near_duplicate_distance"],
                   duplicate_groups=tuple(tuple(g) for g in d["duplicate_groups"]),
                   findings=tuple(Finding.from_dict(f) for f in d["findings"]))


def format_report(report: AuditReport, max_files: int = 5) -> str:
    """The report as plain text for a terminal."""
    lines = [f"Dataset {report.dataset_id}: {report.num_images} images, {len(report.class_counts)} classes",
             f"  root: {report.root}",
             "  classes: " + ", ".join(f"{k}={v}" for k, v in report.class_counts.items()),
             "  splits: " + "; ".join(f"{k} {sum(v.values())}" for k, v in report.split_counts.items()),
             f"  imbalance: {report.imbalance_ratio:g}:1",
             f"  sizes: min {report.sizes.min_width}x{report.sizes.min_height}, median "
             f"{report.sizes.median_width:g}x{report.sizes.median_height:g}, max "
             f"{report.sizes.max_width}x{report.sizes.max_height}",
             "  colour modes: " + ", ".join(f"{k}={v}" for k, v in report.mode_counts.items()),
             f"  mean/std ({report.data_stats.split}): {report.data_stats.mean} / {report.data_stats.std}"
             f"  model: {report.model_mean} / {report.model_std}",
             f"Findings: {report.count('error')} errors, {report.count('warning')} warnings, "
             f"{report.count('info')} info"]
    for f in report.findings:
        lines.append(f"  {f.severity.upper():7} [{f.code}] {f.message}")
        if f.fix:
            lines.append(f"          fix: {f.fix}")
        shown = [f"{a} <-> {b}" for a, b in f.pairs] or list(f.files)
        for item in shown[:max_files]:
            lines.append(f"          - {item}")
        if len(shown) > max_files:
            lines.append(f"          ... and {len(shown) - max_files} more")
    lines.append("Training is BLOCKED by the errors above." if report.blocks_training
                 else "Nothing blocks training.")
    return "\n".join(lines)
