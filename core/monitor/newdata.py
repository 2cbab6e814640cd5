"""New labelled data for a retrain, and the dataset version it makes with the champion's own data.

Two sources:

- feedback in the prediction log (core.deploy.predlog): every prediction of the model whose LATEST feedback label
  exists and whose image bytes were logged. A prediction without a stored image cannot be trained on (the server
  logs images only with `log_images` on): those are counted and said so, never silently dropped. The same image
  labelled on several predictions is used once, with its latest label.
- a labelled batch a person gives: a folder of class subfolders or a zip of one (ingested through
  core.data.ingest, with its limits and refusals); any train/val/test folders in it are ignored, the batch is split
  like the feedback.

Images already in the champion's dataset (same sha256) are not new and are left out. Labels may name classes the
champion does not know: they are allowed (the retrain fits its head again on the new class list) and listed in
`NewData.new_classes` (the server's /feedback already refuses labels outside the served version's classes, so new
classes come from uploads). A label that cannot be a folder name (empty, "/", a leading dot) is refused with its count.

`build_dataset_version` writes one staging folder `train|val|test/<class>/...`: the champion run's manifest rows
in their own split (old test images stay test) and the new images (`new-<sha>.<ext>`) split 70/15/15 among
themselves, stratified by class (core.data.splits' assignment), so new test images are never trained on. The
folder is ingested as a split layout (kept as given: checked file by file after ingest) into the content-addressed
store and removed; on any failure nothing is left but what the store already held. Which sha256s are new is
returned and written beside the dataset as `<datasets>/<dataset_id>.newdata.json`.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from PIL import Image

from core.data.ingest import resolve_dataset
from core.data.splits import SPLITS, read_manifest, split_dataset
from core.data.types import Dataset, Sample
from core.deploy.predlog import PredictionLog
from core.deploy.registry import Registry
from core.errors import StudioError
from core.files import write_text

NEW_RATIOS = (0.7, 0.15, 0.15)  # the new examples' own split
NEW_PREFIX = "new-"
RECORD_SUFFIX = ".newdata.json"
_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


class NewDataError(StudioError, ValueError):
    """New data that cannot make a dataset version (no champion, no run manifest, nothing usable)."""


@dataclass(frozen=True)
class NewExample:
    sha256: str
    label: str
    source: str                      # "feedback" | "upload"
    prediction_id: str | None = None  # feedback: the logged prediction holding the image bytes
    path: str | None = None          # upload: the file in the stored dataset
    predicted: str | None = None     # feedback: what the served model answered
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class NewData:
    model: str
    classes: tuple[str, ...]           # the champion's classes
    examples: tuple[NewExample, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> how many were left out
    champion_version: int | None = None
    champion_run: str | None = None

    @property
    def per_class(self) -> dict[str, int]:
        return dict(sorted(Counter(e.label for e in self.examples).items()))

    @property
    def per_source(self) -> dict[str, int]:
        return dict(sorted(Counter(e.source for e in self.examples).items()))

    @property
    def new_classes(self) -> tuple[str, ...]:
        return tuple(sorted({e.label for e in self.examples} - set(self.classes)))

    def __len__(self) -> int:
        return len(self.examples)

    def sentences(self) -> list[str]:
        out = [f"{len(self.examples)} new labelled images ("
               + ", ".join(f"{n} from {s}" for s, n in self.per_source.items()) + ")" if self.examples
               else "no new labelled images"]
        out += [f"{n} left out: {reason}" for reason, n in self.skipped.items()]
        if self.new_classes:
            out.append(f"new classes {', '.join(self.new_classes)}: allowed, the retrained head covers them")
        return out

    def counts(self) -> dict[str, Any]:
        return {"total": len(self.examples), "per_class": self.per_class, "per_source": self.per_source,
                "skipped": dict(self.skipped), "new_classes": list(self.new_classes)}


@dataclass(frozen=True)
class DatasetVersion:
    dataset_id: str
    root: str                          # the stored dataset folder (what start_run is given)
    base_dataset_id: str               # the champion run's dataset
    new_sha256: tuple[str, ...]        # the new images' content hashes (sorted)
    counts: dict[str, dict[str, int]]  # "old" / "new" -> split -> images
    repeated: dict[str, int] = field(default_factory=dict)  # sha256 -> copies in train (oversampled)
    record: str = ""                   # the JSON beside the dataset
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion_of(root: str, model: str):
    """(ModelVersion, run manifest) of the model's champion (its latest version when no alias is set)."""
    version = Registry(os.path.join(root, "registry")).resolve(model)
    if not version.run_id:
        raise NewDataError(f"{version.ref} records no run id; retraining needs the run it was exported from")
    path = os.path.join(root, "runs", version.run_id, "manifest.json")
    if not os.path.isfile(path):
        raise NewDataError(f"{version.ref}'s run {version.run_id} has no split manifest at {path}; retraining "
                           "needs the champion's own dataset (is the workspace the one it was trained in?)")
    return version, read_manifest(path)


def _bad_label(label: str) -> bool:
    return not label.strip() or label.startswith(".") or any(c in label for c in "/\\\0") or label in ("..",)


def collect_new_data(root: str, model: str, extra: str | os.PathLike | None = None) -> NewData:
    """New labelled images for `model`: the prediction log's feedback (with logged images) and `extra` (a folder
    of class subfolders or a zip), minus images the champion's dataset holds; the rest counted with reasons."""
    version, manifest = champion_of(root, model)
    known = {r.sha256 for r in manifest.rows}
    skipped: Counter[str] = Counter()
    chosen: dict[str, NewExample] = {}
    log = PredictionLog.for_workspace(root)
    try:
        rows = log.query(
            "SELECT p.id, p.input_sha256, p.predicted, p.width, p.height, p.image IS NOT NULL AS has_image, "
            "f.label, MAX(f.at) AS f_at FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            "WHERE p.model = ? GROUP BY f.prediction_id ORDER BY f_at", (model,))
    finally:
        log.close()
    for r in rows:  # oldest feedback first: a later label of the same image replaces an earlier one
        if not r["has_image"]:
            skipped["labelled predictions without a stored image (the server logs images with log_images on)"] += 1
        elif _bad_label(r["label"]):
            skipped["labels that cannot be a class folder name (empty, a slash, a leading dot)"] += 1
        elif r["input_sha256"] in known:
            skipped["images already in the champion's dataset"] += 1
        else:
            if r["input_sha256"] in chosen:
                skipped["repeat labels of an image already counted (its latest label is used)"] += 1
            chosen[r["input_sha256"]] = NewExample(r["input_sha256"], r["label"], "feedback", r["id"],
                                                   predicted=r["predicted"], width=r["width"], height=r["height"])
    if extra is not None:
        batch = resolve_dataset(extra, root)
        for s in batch.skipped:
            skipped[f"files the upload refused ({s.code})"] += 1
        for s in batch.samples:
            if _bad_label(s.label):
                skipped["labels that cannot be a class folder name (empty, a slash, a leading dot)"] += 1
            elif s.sha256 in known:
                skipped["images already in the champion's dataset"] += 1
            else:
                if s.sha256 in chosen:
                    skipped["images both uploaded and labelled in feedback (the upload's label is used)"] += 1
                chosen[s.sha256] = NewExample(s.sha256, s.label, "upload", path=str(batch.path_of(s)))
    examples = tuple(sorted(chosen.values(), key=lambda e: e.sha256))
    return NewData(model, tuple(version.info.get("classes") or manifest.labels), examples, dict(skipped),
                   version.version, version.run_id)


def _image_bytes(log: PredictionLog, example: NewExample) -> bytes:
    if example.source == "upload":
        with open(example.path, "rb") as f:
            return f.read()
    row = log.query("SELECT image FROM predictions WHERE id = ?", (example.prediction_id,))
    if not row or row[0]["image"] is None:
        raise NewDataError(f"prediction {example.prediction_id}'s image is gone from the log; collect again")
    return bytes(row[0]["image"])


def _suffix(data: bytes, fallback: str = ".png") -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _FORMATS.get(im.format or "", fallback)
    except Exception:  # noqa: BLE001 - not decodable here: ingest refuses it and says why
        return fallback


def _old_name(row, taken: set[str]) -> str:
    """The old file's name inside its class folder: its path without a leading split and class folder."""
    parts = row.path.split("/")
    if len(parts) > 2 and parts[0].lower() in ("train", "training", "val", "valid", "validation", "dev", "test",
                                               "testing"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == row.label:
        parts = parts[1:]
    name = "/".join(parts)
    if name.startswith(NEW_PREFIX) or name in taken:
        name = f"old-{len(taken)}-{parts[-1]}"
    taken.add(name)
    return name


def _place(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)  # same disk: no copy; ingest reads it and writes its own copy
    except OSError:
        shutil.copyfile(src, dst)


def _new_splits(new: NewData) -> dict[str, str]:
    """sha256 -> split of each new image: stratified 70/15/15 among the new images only."""
    samples = tuple(Sample(e.sha256, e.label, None, e.sha256) for e in new.examples)
    manifest = split_dataset(Dataset("new", "", samples), NEW_RATIOS, seed=0, near_duplicate_groups=())
    return {r.sha256: r.split for r in manifest.rows}


def build_dataset_version(root: str, model: str, new: NewData, repeat: Mapping[str, int] | None = None
                          ) -> DatasetVersion:
    """A new stored dataset: the champion run's rows in their old splits plus `new`'s images in their own split.

    `repeat`: sha256 -> total copies of that new image when it lands in train (oversampling, e.g. the classes the
    champion fails on); val and test images are never repeated."""
    if not new.examples:
        raise NewDataError(f"no new labelled images for {model}: " + "; ".join(new.sentences()))
    _, manifest = champion_of(root, model)
    bad = sorted({r.label for r in manifest.rows if _bad_label(r.label)})
    if bad:
        raise NewDataError(f"the champion's classes {bad} cannot be class folder names; retrain from a folder")
    splits = _new_splits(new)
    datasets = os.path.join(root, "datasets")
    os.makedirs(datasets, exist_ok=True)
    staging = os.path.join(datasets, f".staging-newdata-{uuid.uuid4().hex}")
    planned: dict[str, str] = {}  # staged relative path -> split
    repeated: dict[str, int] = {}
    log = PredictionLog.for_workspace(root)
    try:
        taken: dict[tuple[str, str], set[str]] = {}
        for row in manifest.rows:
            name = _old_name(row, taken.setdefault((row.split, row.label), set()))
            rel = f"{row.split}/{row.label}/{name}"
            _place(str(manifest.path_of(row)), os.path.join(staging, *rel.split("/")))
            planned[rel] = row.split
        for e in new.examples:
            data = _image_bytes(log, e)
            split = splits[e.sha256]
            copies = max(1, int((repeat or {}).get(e.sha256, 1))) if split == "train" else 1
            if copies > 1:
                repeated[e.sha256] = copies
            for k in range(copies):
                rel = f"{split}/{e.label}/{NEW_PREFIX}{e.sha256[:20]}{'' if k == 0 else f'-copy{k}'}{_suffix(data)}"
                os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
                with open(os.path.join(staging, *rel.split("/")), "wb") as f:
                    f.write(data)
                planned[rel] = split
        log.close()
        dataset = resolve_dataset(staging, root, filename=f"retrain-{model}")
    finally:
        log.close()
        shutil.rmtree(staging, ignore_errors=True)
    got = {s.path: s.split for s in dataset.samples}
    moved = [p for p, split in planned.items() if got.get(p, split) != split]
    if dataset.layout != "splits" or moved:
        raise NewDataError(f"the dataset version did not keep the planned splits ({len(moved)} images moved, layout "
                           f"{dataset.layout}); nothing was trained")
    new_shas = sorted({e.sha256 for e in new.examples})
    counts = {"old": _split_counts(r.split for r in manifest.rows),
              "new": _split_counts(s.split for s in dataset.samples if os.path.basename(s.path).startswith(NEW_PREFIX))}
    refused = [f"{s.path}: {s.reason}" for s in dataset.skipped]
    record = os.path.join(datasets, dataset.dataset_id + RECORD_SUFFIX)
    version = DatasetVersion(dataset.dataset_id, dataset.root, manifest.dataset_id, tuple(new_shas), counts,
                             repeated, record, tuple(refused))
    write_text(record, json.dumps({**version.to_dict(), "model": model, "champion_version": new.champion_version,
                                   "champion_run": new.champion_run, "new_ratios": list(NEW_RATIOS)}, indent=1))
    return version


def _split_counts(splits) -> dict[str, int]:
    c = Counter(splits)
    return {s: c[s] for s in SPLITS if c[s]}

