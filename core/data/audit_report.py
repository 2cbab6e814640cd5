"""What an audit returns: ``AuditReport`` (counts, sizes, colour modes, channel statistics, duplicate groups)
and its ``Finding``s, each with a severity ("error" blocks training), the files involved and a fix; as dicts
for JSON and as plain text for a terminal (``format_report``). ``core.data.audit`` makes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEVERITIES = ("error", "warning", "info")


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
