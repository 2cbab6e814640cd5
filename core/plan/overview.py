"""Everything a person should see about a dataset before training on it, in one call.

`dataset_overview` loads a stored dataset, splits it exactly as a run will (core.runs.launch.prepare_data),
audits it against the chosen model's input size and normalisation with that split, and picks example
images per class and the duplicate / leakage pairs to show side by side. `augmentation_preview` shows
what an AugmentSpec does to a few of its images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.config import TrainConfig
from core.data.audit import audit_dataset
from core.data.audit_report import AuditReport
from core.data.images import load_rgb
from core.data.ingest import resolve_dataset
from core.data.splits import Manifest
from core.data.types import Dataset, Sample
from core.plan.estimate import preprocess_for
from core.runs.launch import prepare_data
from core.train.augment import preview_grid

# how a pair finding is titled on the page, in order of concern
PAIR_CODES = ("split_leakage", "conflicting_labels", "near_duplicate_leakage", "near_duplicate_conflicting_labels",
              "exact_duplicates", "near_duplicates")


@dataclass(frozen=True)
class DuplicatePair:
    code: str  # the audit finding's code, e.g. "split_leakage"
    severity: str
    a: str  # absolute paths
    b: str
    label_a: str
    label_b: str
    split_a: str
    split_b: str


@dataclass(frozen=True)
class RelatedExample:
    """One group of related images the split keeps together, for showing side by side."""

    source: str  # "names" | "embeddings"
    label: str
    split: str
    paths: tuple[str, ...]  # absolute


@dataclass(frozen=True)
class DatasetOverview:
    dataset: Dataset
    report: AuditReport
    manifest: Manifest | None  # the split a run with this config trains on; None when it cannot be split
    split_error: str  # why not, when manifest is None
    examples: dict[str, tuple[str, ...]]  # label -> absolute paths of a few images
    pairs: tuple[DuplicatePair, ...]
    related: tuple[RelatedExample, ...] = ()  # example groups of related images (core.data.related), largest first

    @property
    def split_counts(self) -> dict[str, dict[str, int]]:
        """split -> label -> images: the run's split when there is one, else the source's own."""
        return self.manifest.counts() if self.manifest is not None else self.report.split_counts

    def split_sizes(self) -> dict[str, int]:
        return {split: sum(per.values()) for split, per in self.split_counts.items()}

    @property
    def name(self) -> str:
        return self.dataset.source or self.dataset.dataset_id[:12]


def dataset_overview(dataset: Dataset | str, workspace_dir: str, config: TrainConfig | None = None,
                     per_class: int = 8, max_pairs: int = 12) -> DatasetOverview:
    """Split (as a run with `config` would), audit against `config.model`, pick examples and pairs."""
    config = config or TrainConfig()

    dataset = resolve_dataset(dataset, workspace_dir)  # a Dataset, a stored id, or a stored folder
    manifest, split_error = None, ""
    try:
        manifest = prepare_data(dataset.root, config, workspace_dir)  # the very split a run will use
    except ValueError as exc:  # SplitError, DataError, IngestError: shown with the report
        split_error = str(exc)
    pre = preprocess_for(config.model, config.image_size)
    report = audit_dataset(dataset, workspace_dir=workspace_dir, manifest=manifest, model_mean=pre.mean,
                           model_std=pre.std, min_size=pre.input_size)
    return DatasetOverview(dataset, report, manifest, split_error, _examples(dataset, per_class),
                           _pairs(dataset, report, manifest, max_pairs), _related(dataset, manifest))


def _related(dataset: Dataset, manifest: Manifest | None) -> tuple[RelatedExample, ...]:
    if manifest is None:
        return ()
    samples = {s.path: s for s in dataset.samples}
    split_of = {r.path: r.split for r in manifest.rows}
    out = []
    for found in manifest.grouping:
        for group in found.get("examples", ()):
            if all(p in samples for p in group):
                splits = sorted({split_of.get(p, "") for p in group})
                out.append(RelatedExample(found["source"], samples[group[0]].label, "/".join(splits),
                                          tuple(str(dataset.path_of(samples[p])) for p in group)))
    return tuple(out)


def _examples(dataset: Dataset, per_class: int) -> dict[str, tuple[str, ...]]:
    """Evenly spaced images of each class (deterministic: the same images every time)."""
    by_label: dict[str, list] = {}
    for sample in dataset.samples:
        by_label.setdefault(sample.label, []).append(sample)
    out = {}
    for label in sorted(by_label):
        samples = by_label[label]
        picks = np.linspace(0, len(samples) - 1, min(per_class, len(samples))).round().astype(int)
        out[label] = tuple(str(dataset.path_of(samples[i])) for i in dict.fromkeys(picks.tolist()))
    return out


def _pairs(dataset: Dataset, report: AuditReport, manifest: Manifest | None, limit: int
           ) -> tuple[DuplicatePair, ...]:
    samples = {s.path: s for s in dataset.samples}
    split_of = {s.path: s.split or "unsplit" for s in dataset.samples}
    if manifest is not None:
        split_of.update({r.path: r.split for r in manifest.rows})
    findings = sorted((f for f in report.findings if f.pairs and f.code in PAIR_CODES),
                      key=lambda f: PAIR_CODES.index(f.code))
    out = []
    for finding in findings:
        for a, b in finding.pairs:
            if len(out) >= limit:
                return tuple(out)
            if a in samples and b in samples:
                out.append(DuplicatePair(finding.code, finding.severity, str(dataset.path_of(samples[a])),
                                         str(dataset.path_of(samples[b])), samples[a].label, samples[b].label,
                                         split_of[a], split_of[b]))
    return tuple(out)


def augmentation_preview(dataset: Dataset, config: TrainConfig, images: int = 3, per_image: int = 4,
                         seed: int = 0) -> np.ndarray:
    """A uint8 grid: one row per image (one from each of the first classes), the un-augmented view first."""

    firsts: dict[str, Sample] = {}
    for sample in dataset.samples:
        firsts.setdefault(sample.label, sample)
        if len(firsts) >= images:
            break
    config.augment.validate()
    pictures = [load_rgb(str(dataset.path_of(s))) for s in firsts.values()]
    return preview_grid(pictures, preprocess_for(config.model, config.image_size), config.augment, per_image, seed)
