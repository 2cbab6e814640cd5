"""Audit a dataset before training: counts, balance, broken files, sizes, colour modes, statistics,
exact and near duplicates (within a class, across classes, across splits) and look-alike class names.

Every problem is a ``Finding`` with a severity ("error" blocks training), the files involved and a
suggested fix. What a training run would refuse (one class, no validation images, no train split) is an
error in the run's own words, from the same check (``core.data.splits.training_refusal``, ``split_dataset``).
The images are not decoded here: ``core.data.ingest`` computed one ``ImageProbe`` per file while ingesting (a
single read per file), and the audit works from those. The report's records and the tables of finding texts
are ``core.data.audit_report``'s, the duplicate groups ``core.data.duplicates``'.

CLI: ``python -m core audit DATA [--json] [--workspace DIR]``; see ``core.cli.audit``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter, defaultdict
from typing import Any, BinaryIO, Iterable, Sequence

import numpy as np

from core.config import TrainConfig
from core.data.audit_report import (
    MODE_HANDLING,
    SEVERITIES,
    SKIP_FINDINGS,
    AuditReport,
    ChannelStats,
    Finding,
    SizeStats,
)
from core.data.duplicates import NEAR_DUPLICATE_DISTANCE, _duplicates
from core.data.ingest import resolve_dataset
from core.data.limits import IngestLimits
from core.data.related import find_related
from core.data.splits import SplitError, split_dataset, training_refusal
from core.data.store import load_probes
from core.data.types import Dataset, ImageProbe, Sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMBALANCE_WARN_RATIO = 10.0
SMALL_CLASS = 5
MAX_LISTED = 200             # files / pairs listed in one finding; the message gives the full count
UNSPLIT = "unsplit"


# --------------------------------------------------------------------------------------------------
# The audit


def _capped(items: Iterable[Any]) -> tuple:
    return tuple(item for _, item in zip(range(MAX_LISTED), items))


def _listed(n: int) -> str:
    return f" (first {MAX_LISTED} listed)" if n > MAX_LISTED else ""


def _name_key(label: str) -> str:
    return re.sub(r"[\s_\-]+", "", label.casefold())


def _pair_findings(pairs: list[tuple[Sample, Sample]], split_of: dict[str, str], exact: bool
                   ) -> list[Finding]:
    within, conflicting, leaking = [], [], []
    for a, b in pairs:
        if a.label != b.label:
            conflicting.append((a, b))
        sa, sb = split_of[a.path], split_of[b.path]
        if sa != sb and UNSPLIT not in (sa, sb):
            leaking.append((a, b))
        elif a.label == b.label:
            within.append((a, b))
    kind = "identical" if exact else "near-duplicate"
    out = []

    def make(severity: str, code: str, group: list, what: str, fix: str) -> None:
        if not group:
            return
        files = sorted({p for a, b in group for p in (a.path, b.path)})
        out.append(Finding(severity, code, f"{len(group)} {kind} pairs {what}{_listed(len(group))}",
                           _capped(files), fix, _capped((a.path, b.path) for a, b in group)))

    if exact:
        make("warning", "exact_duplicates", within, "within the same class and split: the copies "
             "count twice in training", "Delete the extra copies (they are kept in one split anyway).")
        make("error", "conflicting_labels", conflicting, "carry different labels: the same image "
             "can't be two classes", "Keep one copy, in the folder of its true class.")
        make("error", "split_leakage", leaking, "sit in different splits: validation/test scores "
             "would be inflated", "Delete the copies from val/test, or let Transfer Studio make the split: give "
             "one folder per class, without train/val/test folders (or a CSV without a split column), and it keeps "
             "copies in one split.")
    else:
        make("info", "near_duplicates", within, "within the same class and split (resized, "
             "re-encoded or nearly identical shots)", "Usually fine; remove them if they are "
             "accidental copies. The split keeps each group in one split.")
        make("warning", "near_duplicate_conflicting_labels", conflicting, "carry different labels",
             "Check those pairs: one of them is probably mislabelled.")
        make("warning", "near_duplicate_leakage", leaking, "sit in different splits: validation/"
             "test scores may be inflated", "Move each pair into one split, or let Transfer Studio make the split "
             "(one folder per class, without train/val/test folders), which keeps near duplicates together.")
    return out


def _related_findings(manifest: Any, split_of: dict[str, str]) -> list[Finding]:
    """What core.data.related found (recorded in the split manifest), and whether given splits scatter it."""
    out = []
    for found in manifest.grouping:
        if not found.get("groups"):
            if found.get("source") == "none" and found.get("rule"):
                out.append(Finding("info", "related_images_not_checked", found["rule"][0].upper() + found["rule"][1:],
                                   (), "To compare them anyway, set \"Related images\" on the Configure page to "
                                   "\"from file names and image similarity, however many images\" "
                                   "(group_by=\"embeddings\" outside the dashboard)."))
            continue
        examples = [tuple(g) for g in found.get("examples", ())]
        spread = [g for g in examples if len({split_of.get(p, UNSPLIT) for p in g} - {UNSPLIT}) > 1]
        where = {"names": "by their file names", "embeddings": "by their pretrained features"}.get(found["source"], "")
        message = (f"{found['images']} images in {found['groups']} groups look like pictures of one thing each "
                   f"({where}: {found['rule']}); the split keeps each group in one split")
        fix = ("Nothing to do: validation and test then hold only things training has not seen. If these images "
               "are unrelated, switch off \"Split by these groups\" on the Dataset page (group_by=\"none\" "
               "outside the dashboard); if you know the true groups (object, patient, part), give them as a CSV "
               "'group' column.")
        if spread:  # only possible when the data came with its own splits
            out.append(Finding("warning", "related_leakage", message.split("; ")[0] + "; the data's own splits put "
                               "some groups in more than one split, so validation/test scores may be inflated",
                               _capped(p for g in spread for p in g), "Move each group into one split, or give the "
                               "data without its own splits (one folder per class) so the split keeps groups "
                               "together.", _capped((g[0], g[1]) for g in spread)))
        else:
            out.append(Finding("info", "related_images", message, _capped(p for g in examples for p in g), fix,
                               _capped((g[0], g[1]) for g in examples)))
    return out


def _refusal_findings(dataset: Dataset, manifest: Any, source: str,
                      duplicate_groups: Sequence[Sequence[str]] | None) -> list[Finding]:
    """What a training run on this data would refuse, as the error it would raise (core.data.splits.training_refusal
    and split_dataset's SplitError). The split is the manifest's, else the one a run with the default config
    makes: its fractions and seed, duplicates and file-name relations kept together (``duplicate_groups``:
    those at NEAR_DUPLICATE_DISTANCE, None to compute them). Only the pretrained-embedding relations a run may
    add are left out, so the audit stays fast and runs no model."""
    if manifest is None:
        config = TrainConfig()
        test = config.test_fraction  # as core.runs.launch.prepare_data
        if dataset.has_given_splits and not any(s.split == "test" for s in dataset.samples):
            test = 0.0
        ratios = (1.0 - config.val_fraction - test, config.val_fraction, test)
        related = find_related([s.path for s in dataset.samples], [s.label for s in dataset.samples],
                               any(s.group for s in dataset.samples), "names")
        try:
            manifest = split_dataset(dataset, ratios, seed=config.seed, near_duplicate_groups=duplicate_groups,
                                     related=related)
        except SplitError as exc:
            return [Finding("error", "cannot_split", str(exc), (), "Give the data a train split (DATA/train/"
                            "<class>/...), or let the split be made for you: DATA/<class>/<image>.")]
    refusal = training_refusal(((r.label, r.split) for r in manifest.rows), source)
    if not refusal:
        return []
    if len({r.label for r in manifest.rows}) < 2:
        return [Finding("error", "single_class", refusal, (), "Put each class in its own folder: "
                        "DATA/<class>/<image>.")]
    if not any(r.split == "train" for r in manifest.rows):
        return [Finding("error", "empty_split", refusal, (), "Give the data training images "
                        "(DATA/train/<class>/...), or let the split be made for you: DATA/<class>/<image>.")]
    counts = Counter(r.label for r in manifest.rows)
    alone = sorted(label for label, n in counts.items() if n < 2)
    listed = f": {', '.join(alone[:10])}{' ...' if len(alone) > 10 else ''}" if alone else ""
    return [Finding("error", "empty_split", refusal, (),
                    f"A class with a single image ({len(alone)} of the {len(counts)} classes here{listed}), or whose "
                    "images are all one group of duplicate or related images, goes wholly to train, so validation "
                    "gets none of it. Add images so that classes hold two or more distinct ones, or give a val "
                    "split (DATA/val/<class>/...).")]


def _split_findings(dataset: Dataset, split_of: dict[str, str]) -> list[Finding]:
    labels_by_split: dict[str, set[str]] = defaultdict(set)
    for s in dataset.samples:
        labels_by_split[split_of[s.path]].add(s.label)
    given = [k for k in labels_by_split if k != UNSPLIT]
    if not given or "train" not in labels_by_split:  # no train split: training refuses that unless unsplit
        return []                                     # images make one; _refusal_findings says which
    out = []
    missing = sorted(set().union(*(labels_by_split[k] for k in given)) - labels_by_split["train"])
    if missing:
        out.append(Finding("error", "label_missing_from_train", f"classes {missing} appear in "
                           "val/test but have no training images", (), "Add training images for "
                           "them, or remove them from val/test."))
    splits_by_group: dict[str, set[str]] = defaultdict(set)
    files_by_group: dict[str, list[str]] = defaultdict(list)
    for s in dataset.samples:
        if s.group is not None and split_of[s.path] != UNSPLIT:
            splits_by_group[s.group].add(split_of[s.path])
            files_by_group[s.group].append(s.path)
    spread = sorted(g for g, splits in splits_by_group.items() if len(splits) > 1)
    if spread:
        files = [p for g in spread for p in files_by_group[g]]
        out.append(Finding("error", "group_leakage", f"{len(spread)} groups (CSV 'group' column, e.g. "
                           f"patients) have images in more than one split: {spread[:10]}"
                           f"{' ...' if len(spread) > 10 else ''}", _capped(files),
                           "Put each group's images in one split, or leave out the CSV's split column so that "
                           "Transfer Studio makes the split, which keeps each group together."))
    return out


def _skip_findings(dataset: Dataset) -> list[Finding]:
    by_code: dict[str, list] = defaultdict(list)
    for s in dataset.skipped:
        by_code[s.code].append(s)
    out = []
    for code, entries in sorted(by_code.items()):
        severity, finding_code, what, fix = SKIP_FINDINGS.get(
            code, ("warning", code, "entries were refused", "See each file's reason."))
        reasons = "; ".join(e.reason for e in entries[:3]) + (" ..." if len(entries) > 3 else "")
        out.append(Finding(severity, finding_code, f"{len(entries)} {what}{_listed(len(entries))}: "
                           f"{reasons}", _capped(e.path for e in entries), fix))
    return out


def _mode_findings(samples: Sequence[Sample], probes: dict[str, ImageProbe]) -> list[Finding]:
    by_mode: dict[str, list[str]] = defaultdict(list)
    rotated = []
    for s in samples:
        p = probes.get(s.sha256)
        if p is None:
            continue
        by_mode[p.mode].append(s.path)
        if p.orientation != 1:
            rotated.append(s.path)
    out = []
    for mode in sorted(by_mode):
        if mode == "RGB":
            continue
        files = by_mode[mode]
        handling = MODE_HANDLING.get(mode, "converted to RGB by Pillow")
        out.append(Finding("info", "colour_mode", f"{len(files)} images are {mode}: {handling}"
                           f"{_listed(len(files))}", _capped(files), "Nothing to do: the pipeline "
                           "converts every image to 8-bit RGB."))
    if rotated:
        out.append(Finding("info", "exif_orientation", f"{len(rotated)} images carry an EXIF "
                           f"rotation/flip: the pipeline applies it, so the model sees them upright"
                           f"{_listed(len(rotated))}", _capped(rotated), "Nothing to do."))
    return out


def _channel_stats(samples: Sequence[Sample], probes: dict[str, ImageProbe], split_of: dict[str, str]
                   ) -> ChannelStats:
    train = [s for s in samples if split_of[s.path] == "train"]
    chosen, split = (train, "train") if train else (samples, "all")
    total = np.zeros(3)
    squares = np.zeros(3)
    pixels, images = 0, 0
    for s in chosen:
        p = probes.get(s.sha256)
        if p is None:
            continue
        total += p.channel_sum
        squares += p.channel_sqsum
        pixels += p.pixel_count
        images += 1
    if pixels == 0:
        return ChannelStats((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0, split)
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    return ChannelStats(tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std),
                        images, split)


def audit_dataset(dataset_or_source: Dataset | str | os.PathLike | BinaryIO, *,
                  workspace_dir: str | os.PathLike | None = None, filename: str | None = None,
                  image_root: str | os.PathLike | None = None, manifest: Any = None,
                  model_mean: Sequence[float] = IMAGENET_MEAN, model_std: Sequence[float] = IMAGENET_STD,
                  min_size: int = 224, near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
                  limits: IngestLimits = IngestLimits(), workers: int = 1) -> AuditReport:
    """Audit a ``Dataset``, a stored dataset folder, or any source ``core.data.ingest.ingest`` accepts.

    A source is ingested into ``workspace_dir`` (a temporary one, deleted afterwards, when None).
    ``manifest`` (a ``core.data.splits.Manifest``) supplies the splits for the leakage check and the
    train-only channel statistics when the data has no splits of its own. ``min_size`` is the model
    input side; ``near_duplicate_distance`` the pHash Hamming distance (-1 turns near duplicates off).
    """
    if workspace_dir is None and not isinstance(dataset_or_source, Dataset):
        with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
            return audit_dataset(dataset_or_source, workspace_dir=tmp, filename=filename,
                                 image_root=image_root, manifest=manifest, model_mean=model_mean,
                                 model_std=model_std, min_size=min_size,
                                 near_duplicate_distance=near_duplicate_distance, limits=limits,
                                 workers=workers)
    dataset = resolve_dataset(dataset_or_source, workspace_dir, filename=filename, image_root=image_root,
                              limits=limits, workers=workers)
    probes = load_probes(dataset, workers)
    samples = dataset.samples
    split_of = {s.path: s.split or UNSPLIT for s in samples}
    if manifest is not None:
        if manifest.dataset_id != dataset.dataset_id:
            raise ValueError(f"the manifest is for dataset {manifest.dataset_id}, not "
                             f"{dataset.dataset_id}; split this dataset first")
        split_of.update({row.path: row.split for row in manifest.rows})

    findings: list[Finding] = []
    class_counts = dict(sorted(Counter(s.label for s in samples).items()))
    split_counts: dict[str, dict[str, int]] = {}
    for s in samples:
        per = split_counts.setdefault(split_of[s.path], {})
        per[s.label] = per.get(s.label, 0) + 1
    split_counts = {k: dict(sorted(split_counts[k].items()))
                    for k in ("train", "val", "test", UNSPLIT) if k in split_counts}

    # 1. what training itself refuses (too few classes, no validation images, no train split), in its words;
    #    then the classes: how balanced, how big, named alike
    dups = _duplicates(samples, probes, near_duplicate_distance)
    source = os.fspath(dataset_or_source) if isinstance(dataset_or_source, (str, os.PathLike)) else dataset.root
    findings += _refusal_findings(dataset, manifest, source, dups.groups if near_duplicate_distance
                                  == NEAR_DUPLICATE_DISTANCE else None)
    largest = max(class_counts.values())
    smallest = min(class_counts.values())
    imbalance = round(largest / smallest, 2)
    if imbalance >= IMBALANCE_WARN_RATIO:
        big = max(class_counts, key=class_counts.get)
        small = min(class_counts, key=class_counts.get)
        findings.append(Finding("warning", "class_imbalance", f"classes are imbalanced {imbalance:g}:1 "
                                f"({big}: {largest} images, {small}: {smallest})", (),
                                "Train with class weights, a weighted sampler or focal loss, and judge "
                                "the model on balanced accuracy / per-class recall; or collect more "
                                f"images of {small}."))
    tiny = {k: v for k, v in class_counts.items() if v < SMALL_CLASS}
    if tiny:
        findings.append(Finding("warning", "small_classes", f"classes with fewer than {SMALL_CLASS} "
                                f"images: {tiny}; too few to learn from or to evaluate", (),
                                "Collect more images for them, or merge/remove those classes."))
    alike: dict[str, list[str]] = defaultdict(list)
    for label in class_counts:
        alike[_name_key(label)].append(label)
    for names in alike.values():
        if len(names) > 1:
            findings.append(Finding("warning", "similar_class_names", f"classes {names} differ only "
                                    "in case, spaces, hyphens or underscores: probably the same class",
                                    (), "Merge them into one folder with one name."))
    findings += _split_findings(dataset, split_of)

    # 2. files: refused at ingestion, gone since, too small, colour modes
    findings += _skip_findings(dataset)
    gone = [s.path for s in samples if s.sha256 not in probes or not dataset.path_of(s).is_file()]
    if gone:
        findings.append(Finding("error", "missing_files", f"{len(gone)} dataset files are missing or "
                                f"unreadable since ingestion{_listed(len(gone))}", _capped(gone),
                                "Ingest the source again (the stored copy was changed or deleted)."))
    sized = [(s, probes[s.sha256]) for s in samples if s.sha256 in probes]
    widths = np.array([p.width for _, p in sized] or [0])
    heights = np.array([p.height for _, p in sized] or [0])
    sizes = SizeStats(int(widths.min()), int(heights.min()), float(np.median(widths)),
                      float(np.median(heights)), int(widths.max()), int(heights.max()))
    small_files = [s.path for s, p in sized if min(p.width, p.height) < min_size]
    if small_files:
        findings.append(Finding("warning", "small_images", f"{len(small_files)} of {len(samples)} images "
                                f"are smaller than the model input ({min_size} px) and will be upscaled, "
                                f"which blurs them{_listed(len(small_files))}", _capped(small_files),
                                "Use a model with a smaller input size, or collect larger images."))
    mode_counts = dict(sorted(Counter(p.mode for _, p in sized).items()))
    findings += _mode_findings(samples, probes)

    # 3. statistics beside the model's normalisation
    stats = _channel_stats(samples, probes, split_of)
    gap = max(abs(a - b) for a, b in zip(stats.mean, model_mean))
    findings.append(Finding(
        "info", "normalisation", f"Average colour of the {stats.split} images (red, green, blue; 0 is black, 1 full "
        f"brightness): {stats.mean}, spread {stats.std}; the model was pretrained on images averaging "
        f"{tuple(model_mean)}, spread {tuple(model_std)}: at most {gap:.0%} of the brightness range apart",
        (), "Keep the model's normalisation for pretrained weights."
        + (" The data looks unlike the pretraining images: fine-tune more layers rather than only the "
           "head." if gap > 0.15 else "")))

    # 4. duplicates: exact (sha256) and near (pHash) within a class, across classes, across splits
    findings += _pair_findings(dups.exact, split_of, exact=True)
    findings += _pair_findings(dups.near, split_of, exact=False)

    # 5. related images (views of one object, one patient) the split keeps together
    if manifest is not None:
        findings += _related_findings(manifest, split_of)

    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    return AuditReport(
        dataset_id=dataset.dataset_id, root=dataset.root, num_images=len(samples),
        class_counts=class_counts, split_counts=split_counts, imbalance_ratio=imbalance, sizes=sizes,
        mode_counts=mode_counts, data_stats=stats, model_mean=tuple(model_mean),
        model_std=tuple(model_std), min_size=min_size, near_duplicate_distance=near_duplicate_distance,
        duplicate_groups=dups.groups, findings=tuple(findings))
