"""core.data.splits: stratified, seeded, leak-free splits; given splits respected; manifest files."""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.audit import audit_dataset
from core.data.ingest import ingest
from core.data.splits import Manifest, SplitError, read_manifest, split_dataset, write_manifest


def smooth_image(seed: int, size: int = 16) -> Image.Image:
    small = np.random.default_rng(seed).integers(20, 200, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def save(im: Image.Image, path: Path, fmt: str = "PNG", **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)


def make_classes(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    for folder, n in counts.items():
        for i in range(n):
            seed += 1
            save(smooth_image(seed), root / folder / f"{i:03d}.png")


def split_of(manifest: Manifest) -> dict[str, str]:
    return {r.path: r.split for r in manifest.rows}


def test_split_is_stratified_and_reproducible_to_the_byte(tmp_path):
    make_classes(tmp_path / "data", {"a": 40, "b": 20, "c": 10})
    ds = ingest(tmp_path / "data", tmp_path / "ws")
    manifest = split_dataset(ds, ratios=(0.7, 0.15, 0.15), seed=3)
    assert len(manifest.rows) == 70 and manifest.dataset_id == ds.dataset_id and manifest.root == ds.root
    counts = manifest.counts()
    for label, n in {"a": 40, "b": 20, "c": 10}.items():
        for split, ratio in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
            assert abs(counts[split][label] - ratio * n) <= 1, (label, split, counts)
    assert not manifest.warnings
    assert manifest.labels == ("a", "b", "c")
    assert all(manifest.path_of(r).is_file() for r in manifest.rows_for("val"))

    for suffix in (".csv", ".json"):
        first = write_manifest(manifest, tmp_path / f"one{suffix}")
        again = split_dataset(ds, ratios=(0.7, 0.15, 0.15), seed=3)
        second = write_manifest(again, tmp_path / f"two{suffix}")
        assert first.read_bytes() == second.read_bytes()
        assert read_manifest(first) == manifest
    assert split_of(split_dataset(ds, seed=4)) != split_of(manifest)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file behind

    # the CSV is a plain table after its metadata line
    lines = (tmp_path / "one.csv").read_text().splitlines()
    assert lines[0].startswith("# {") and lines[1] == "path,sha256,label,split"
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[1:]))))
    assert Counter(r["split"] for r in rows) == Counter(r.split for r in manifest.rows)


def test_duplicates_near_duplicates_and_csv_groups_never_straddle_splits(tmp_path):
    images = tmp_path / "images"
    lines = ["path,label,group"]
    seed = 0
    for label in ("cat", "dog"):
        for patient in range(12):  # 12 patients x 3 images per class
            for k in range(3):
                seed += 1
                save(smooth_image(seed), images / f"{label}{patient}_{k}.png")
                lines.append(f"{label}{patient}_{k}.png,{label},{label}-p{patient}")
        for copy in range(4):  # exact copies of one image, and near duplicates of another
            (images / f"{label}_copy{copy}.png").write_bytes((images / f"{label}0_0.png").read_bytes())
            save(smooth_image(seed).resize((24, 24), Image.Resampling.LANCZOS),
                 images / f"{label}_near{copy}.jpg", "JPEG", quality=90)
            lines += [f"{label}_copy{copy}.png,{label},", f"{label}_near{copy}.jpg,{label},"]
    (images / "labels.csv").write_text("\n".join(lines) + "\n")
    ds = ingest(images / "labels.csv", tmp_path / "ws")

    for seed in range(5):
        manifest = split_dataset(ds, seed=seed)
        by_sha, by_group = defaultdict(set), defaultdict(set)
        where = split_of(manifest)
        for s in ds.samples:
            by_sha[s.sha256].add(where[s.path])
            if s.group:
                by_group[s.group].add(where[s.path])
        assert all(len(v) == 1 for v in by_sha.values())
        assert all(len(v) == 1 for v in by_group.values())
        for label in ("cat", "dog"):
            near = {where[p] for p in where if p.startswith(f"{label}_near")}
            assert len(near) == 1
            assert {where[f"{label}{11}_2.png"]} == near  # the originals go with their near copies
        assert set(manifest.counts()) == {"train", "val", "test"}
        report = audit_dataset(ds, workspace_dir=tmp_path / "ws", manifest=manifest)
        assert not {"split_leakage", "near_duplicate_leakage"} & {f.code for f in report.findings}


def test_given_splits_are_kept_and_a_missing_val_is_carved_from_train(tmp_path):
    make_classes(tmp_path / "data", {"train/a": 34, "train/b": 17, "test/a": 5, "test/b": 3})
    ds = ingest(tmp_path / "data", tmp_path / "ws")
    manifest = split_dataset(ds, ratios=(0.7, 0.15, 0.15), seed=0)
    where = split_of(manifest)
    for s in ds.samples:
        if s.split == "test":
            assert where[s.path] == "test"
        else:
            assert where[s.path] in ("train", "val")
    counts = manifest.counts()
    assert counts["test"] == {"a": 5, "b": 3}
    # val takes 0.15 / (0.7 + 0.15) of the given train, per class
    assert counts["val"] == {"a": 6, "b": 3}
    assert counts["train"] == {"a": 28, "b": 14}

    only_train = tmp_path / "only"
    make_classes(only_train, {"train/a": 20, "train/b": 20})
    counts = split_dataset(ingest(only_train, tmp_path / "ws")).counts()
    assert counts["val"] == counts["test"] == {"a": 3, "b": 3}

    resplit = split_dataset(ds, respect_given_splits=False, seed=0)
    assert {r.split for r in resplit.rows if r.path.startswith("test/")} != {"test"}


def test_given_splits_without_train_and_bad_ratios_are_clear_errors(tmp_path):
    make_classes(tmp_path / "data", {"val/a": 2, "test/a": 2, "test/b": 2})
    ds = ingest(tmp_path / "data", tmp_path / "ws")
    with pytest.raises(SplitError, match="no train split"):
        split_dataset(ds)
    for bad in [(0.5, 0.5), (0.8, 0.3, 0.1), (0, 0.5, 0.5), (1.2, -0.1, -0.1)]:
        with pytest.raises(SplitError, match="sum to 1"):
            split_dataset(ds, ratios=bad, respect_given_splits=False)


def test_tiny_classes_warn_instead_of_crashing(tmp_path):
    make_classes(tmp_path / "data", {"big": 30, "pair": 2, "single": 1})
    ds = ingest(tmp_path / "data", tmp_path / "ws")
    manifest = split_dataset(ds, seed=1)
    where = split_of(manifest)
    assert where["single/000.png"] == "train"
    assert sorted(where[p] for p in ("pair/000.png", "pair/001.png")) == ["train", "val"]
    text = " ".join(manifest.warnings)
    assert "val has no images of ['single']" in text
    assert "test has no images of ['pair', 'single']" in text
    assert "train has no images" not in text
    no_test = split_dataset(ds, ratios=(0.8, 0.2, 0.0))
    assert "test" not in no_test.counts()


def test_read_manifest_rejects_foreign_files(tmp_path):
    (tmp_path / "x.csv").write_text("path,label\na.png,cat\n")
    with pytest.raises(ValueError, match="not a manifest"):
        read_manifest(tmp_path / "x.csv")
    with pytest.raises(ValueError, match=".json or .csv"):
        write_manifest(Manifest("id", "/r", 0, (1.0, 0.0, 0.0), ()), tmp_path / "m.txt")
