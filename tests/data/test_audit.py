"""core.data.audit: counts, balance, broken files, colour modes, statistics, duplicates, leakage, CLI."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.audit import audit_dataset
from core.data.audit_report import AuditReport, format_report
from core.data.duplicates import near_duplicate_pairs
from core.cli.audit import main


def smooth_image(seed: int, size: int = 32, shift: int = 0) -> Image.Image:
    """A smooth random picture (8x8 detail, so distinct seeds are >= 16 pHash bits apart); ``shift``
    brightens it, which leaves its perceptual hash unchanged."""
    small = np.random.default_rng(seed).integers(20, 200, (8, 8, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=int)
    return Image.fromarray(np.clip(arr + shift, 0, 255).astype(np.uint8))


def save(im: Image.Image, path: Path, fmt: str = "PNG", **kw) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path.read_bytes()


def by_code(report: AuditReport) -> dict:
    out = {}
    for f in report.findings:
        out.setdefault(f.code, []).append(f)
    return out


def test_duplicates_across_splits_and_labels_are_found_and_block_training(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        save(smooth_image(i), data / "train" / "cat" / f"{i}.png")
        save(smooth_image(10 + i), data / "train" / "dog" / f"{i}.png")
    save(smooth_image(20), data / "val" / "cat" / "own.png")
    save(smooth_image(21), data / "val" / "dog" / "own.png")
    copy = (data / "train" / "cat" / "0.png").read_bytes()
    (data / "val" / "cat" / "copy.png").write_bytes(copy)                 # exact leak
    (data / "train" / "dog" / "dup.png").write_bytes(copy)                # same bytes, other label
    save(smooth_image(10, shift=9), data / "val" / "dog" / "near.png")    # near-duplicate leak
    save(smooth_image(1).resize((48, 48), Image.Resampling.LANCZOS), data / "train" / "cat" / "big.jpg",
         "JPEG", quality=85)                                              # near dup within class

    report = audit_dataset(data, workspace_dir=tmp_path / "ws")
    found = by_code(report)
    [leak] = found["split_leakage"]
    assert leak.severity == "error"
    assert leak.pairs == (("train/cat/0.png", "val/cat/copy.png"),)
    [conflict] = found["conflicting_labels"]
    assert conflict.pairs == (("train/cat/0.png", "train/dog/dup.png"),)
    [near_leak] = found["near_duplicate_leakage"]
    assert near_leak.severity == "warning" and near_leak.pairs == (("train/dog/0.png", "val/dog/near.png"),)
    [near] = found["near_duplicates"]
    assert near.pairs == (("train/cat/1.png", "train/cat/big.jpg"),)
    assert report.blocks_training
    assert set(report.duplicate_groups) == {
        ("train/cat/0.png", "train/dog/dup.png", "val/cat/copy.png"),
        ("train/dog/0.png", "val/dog/near.png"), ("train/cat/1.png", "train/cat/big.jpg")}
    assert report.split_counts == {"train": {"cat": 4, "dog": 4}, "val": {"cat": 2, "dog": 2}}
    assert [f.severity for f in report.findings] == sorted(
        (f.severity for f in report.findings), key=("error", "warning", "info").index)


def test_broken_files_colour_modes_orientation_and_sizes_are_reported(tmp_path):
    data = tmp_path / "data"
    for i in range(5):
        save(smooth_image(i, size=40), data / "cat" / f"{i}.png")
    save(smooth_image(5, size=40).convert("CMYK"), data / "cat" / "cmyk.jpg", "JPEG")
    rgba = smooth_image(6, size=40).convert("RGBA")
    rgba.putalpha(128)
    save(rgba, data / "cat" / "rgba.png")
    deep = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40)
    save(Image.fromarray(deep), data / "dog" / "deep16.png")
    save(smooth_image(7, size=40).convert("L"), data / "dog" / "grey.png")
    rotated = smooth_image(8, size=16).resize((40, 16))
    exif = rotated.getexif()
    exif[0x0112] = 6
    save(rotated, data / "dog" / "rotated.jpg", "JPEG", exif=exif.tobytes())
    good = save(smooth_image(9, size=64), data / "dog" / "tmp.png")
    (data / "dog" / "tmp.png").unlink()
    (data / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "dog" / "corrupt.png").write_bytes(good[:40] + b"\x00" * 200)
    (data / "dog" / "empty.png").write_bytes(b"")
    (data / "dog" / "readme.txt").write_text("not an image")

    report = audit_dataset(data, workspace_dir=tmp_path / "ws", min_size=32)
    found = by_code(report)
    assert found["truncated_files"][0].files == ("dog/truncated.png",)
    assert found["corrupt_files"][0].files == ("dog/corrupt.png",)
    assert found["empty_files"][0].files == ("dog/empty.png",)
    assert found["non_image_files"][0].files == ("dog/readme.txt",)
    assert report.mode_counts == {"CMYK": 1, "I;16": 1, "L": 1, "RGB": 6, "RGBA": 1}
    modes = {f.files[0]: f.message for f in found["colour_mode"]}
    assert "nothing is clipped" in modes["dog/deep16.png"]
    assert "white" in modes["cat/rgba.png"]
    assert "CMYK" in modes["cat/cmyk.jpg"]
    assert found["exif_orientation"][0].files == ("dog/rotated.jpg",)
    # the rotated 40x16 JPEG is 16x40 after EXIF transpose: the only image under 32 px
    assert found["small_images"][0].files == ("dog/rotated.jpg",)
    assert (report.sizes.min_width, report.sizes.max_width, report.sizes.min_height) == (16, 40, 40)
    assert report.sizes.median_width == 40
    assert not report.blocks_training


def test_imbalance_small_and_look_alike_classes(tmp_path):
    data = tmp_path / "data"
    for i in range(20):
        save(smooth_image(i, size=8), data / "cat" / f"{i}.png")
    for i in range(2):
        save(smooth_image(100 + i, size=8), data / "dog" / f"{i}.png")
    save(smooth_image(200, size=8), data / "Dog " / "0.png")
    report = audit_dataset(data, workspace_dir=tmp_path / "ws", min_size=8, near_duplicate_distance=-1)
    found = by_code(report)
    assert report.imbalance_ratio == 20
    [imbalance] = found["class_imbalance"]
    assert imbalance.severity == "warning"
    assert "class weights" in imbalance.fix and "focal loss" in imbalance.fix
    small = found["small_classes"][0].message
    assert "'Dog ': 1" in small and "'dog': 2" in small
    assert "['Dog ', 'dog']" in found["similar_class_names"][0].message
    assert report.class_counts == {"Dog ": 1, "cat": 20, "dog": 2}


def test_channel_statistics_use_the_train_split_only(tmp_path):
    data = tmp_path / "data"
    for label in ("a", "b"):
        for i in range(2):
            save(Image.new("RGB", (8, 8), (51, 102, 255)), data / "train" / label / f"{i}.png")
            save(Image.new("RGB", (8, 8), (255, 255, 255)), data / "val" / label / f"{i}.png")
    report = audit_dataset(data, workspace_dir=tmp_path / "ws", model_mean=(0.5, 0.5, 0.5),
                           model_std=(0.25, 0.25, 0.25), min_size=8)
    assert report.data_stats.split == "train" and report.data_stats.images == 4
    assert report.data_stats.mean == (0.2, 0.4, 1.0)
    assert report.data_stats.std == (0.0, 0.0, 0.0)
    [norm] = by_code(report)["normalisation"]
    assert "(0.5, 0.5, 0.5)" in norm.message


def test_one_class_and_missing_train_labels_block_training(tmp_path):
    data = tmp_path / "data"
    save(smooth_image(1), data / "only" / "0.png")
    report = audit_dataset(data, workspace_dir=tmp_path / "ws")
    assert [f.code for f in report.findings if f.severity == "error"] == ["single_class"]
    data2 = tmp_path / "data2"
    save(smooth_image(2), data2 / "train" / "a" / "0.png")
    save(smooth_image(3), data2 / "train" / "b" / "0.png")
    save(smooth_image(4), data2 / "test" / "c" / "0.png")
    report = audit_dataset(data2, workspace_dir=tmp_path / "ws")
    assert "label_missing_from_train" in by_code(report)


def test_report_round_trips_and_audit_works_from_a_zip_upload(tmp_path):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            for label in ("a", "b"):
                zf.writestr(f"{label}/{i}.png", _png(smooth_image(i + (50 if label == "b" else 0))))
    buf.seek(0)
    report = audit_dataset(buf, filename="upload.zip")  # temporary workspace
    assert report.num_images == 6 and not report.blocks_training
    again = AuditReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def test_near_duplicate_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = rng.integers(0, 64, (40, 3))
    near = base ^ np.array([sum(1 << int(b) for b in row) for row in flips], dtype=np.uint64)
    hashes = np.concatenate([base, near, base[:5]])
    for distance in (0, 3, 20):
        expected = [(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                    if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= distance]
        assert sorted(near_duplicate_pairs(hashes, distance)) == expected


def test_cli_json_output_and_exit_codes(tmp_path, capsys):
    clean = tmp_path / "clean"
    for i in range(5):
        save(smooth_image(i), clean / "a" / f"{i}.png")
        save(smooth_image(100 + i), clean / "b" / f"{i}.png")
    assert main([str(clean), "--json", "--workspace", str(tmp_path / "ws")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert report["num_images"] == 10 and report["blocks_training"] is False

    assert main([str(clean), "--min-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "Nothing blocks training." in out and "classes: a=5, b=5" in out

    # the stored dataset, addressed by id within the workspace
    assert main([report["dataset_id"], "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["dataset_id"] == report["dataset_id"]

    leaky = tmp_path / "leaky"
    save(smooth_image(1), leaky / "train" / "a" / "0.png")
    save(smooth_image(2), leaky / "train" / "b" / "0.png")
    (leaky / "val" / "a").mkdir(parents=True)
    (leaky / "val" / "a" / "0.png").write_bytes((leaky / "train" / "a" / "0.png").read_bytes())
    assert main([str(leaky), "--json"]) == 2
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["blocks_training"] and "split_leakage" in {f["code"] for f in report["findings"]}
    assert main([str(leaky)]) == 2
    assert "BLOCKED" in capsys.readouterr().out

    assert main([str(tmp_path / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["--bogus"]) == 1


def test_csv_groups_spread_over_given_splits_are_leakage(tmp_path):
    lines = ["path,label,split,group"]
    for i in range(6):
        save(smooth_image(i), tmp_path / "img" / f"{i}.png")
        split = "train" if i < 4 else "val"
        lines.append(f"{i}.png,{'ab'[i % 2]},{split},{'p1' if i in (0, 4) else f'q{i}'}")
    (tmp_path / "img" / "labels.csv").write_text("\n".join(lines) + "\n")
    report = audit_dataset(tmp_path / "img" / "labels.csv", workspace_dir=tmp_path / "ws")
    [leak] = by_code(report)["group_leakage"]
    assert leak.severity == "error" and "['p1']" in leak.message
    assert leak.files == ("0.png", "4.png")


# --------------------------------------------------------------------------------------------------
# What training refuses, the audit blocks, in training's words


def noise_classes(root: Path, classes: int, per_class: int = 1, size: int = 8) -> Path:
    """`classes` folders of `per_class` tiny random images each (all distinct, no near duplicates)."""
    rng = np.random.default_rng(classes * 1000 + per_class)
    for c in range(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            save(Image.fromarray(pixels), root / f"c{c:04d}" / f"{i}.png")
    return root


def training_error(source: Path, workspace: Path) -> str | None:
    """The error a run started on `source` stops with before training (None when it would train)."""
    from core.config import TrainConfig
    from core.data.split_data import DataError
    from core.runs.launch import load_data
    from core.data.splits import SplitError

    try:  # file-name relations only, as the audit (no embedding model in a unit test)
        load_data(str(source), TrainConfig(group_by="names"), str(workspace))
    except (DataError, SplitError) as exc:
        return str(exc)
    return None


def errors(report: AuditReport) -> list:
    return [f for f in report.findings if f.severity == "error"]


def test_one_image_per_class_blocks_training(tmp_path):
    data = noise_classes(tmp_path / "data", classes=3)
    report = audit_dataset(data, workspace_dir=tmp_path / "ws", min_size=8)
    [error] = errors(report)
    assert report.blocks_training and error.code == "empty_split"
    assert "(train 3, val 0)" in error.message and "3 of the 3 classes" in error.fix
    assert "Training is BLOCKED" in format_report(report)


def test_thousands_of_one_image_classes_block_training_quickly(tmp_path):
    data = noise_classes(tmp_path / "data", classes=2000)
    started = time.perf_counter()
    report = audit_dataset(data, workspace_dir=tmp_path / "ws", min_size=8)
    seconds = time.perf_counter() - started
    [error] = errors(report)
    assert error.code == "empty_split" and "(train 2000, val 0)" in error.message
    assert "2000 of the 2000 classes" in error.fix and seconds < 30  # about 1.5 s


def test_a_few_one_image_classes_among_big_ones_do_not_block(tmp_path):
    data = noise_classes(tmp_path / "data", classes=3, per_class=4)
    for i in range(2):
        save(smooth_image(i), data / f"rare{i}" / "0.png")
    report = audit_dataset(data, workspace_dir=tmp_path / "ws", min_size=8)
    assert not report.blocks_training and training_error(data, tmp_path / "ws") is None


def make_one_class(root: Path) -> Path:
    return noise_classes(root, classes=1, per_class=3)


def make_one_image_per_class(root: Path) -> Path:
    return noise_classes(root, classes=4)


def make_val_only(root: Path) -> Path:
    noise_classes(root / "val", classes=2, per_class=2)
    return root


def make_near_duplicate_pairs(root: Path) -> Path:
    """Two images per class, each a re-brightened copy of the other: one unit per class, so all train."""
    for c in range(3):
        save(smooth_image(c), root / f"c{c}" / "a.png")
        save(smooth_image(c, shift=9), root / f"c{c}" / "b.png")
    return root


@pytest.mark.parametrize("make, code", [(make_one_class, "single_class"), (make_one_image_per_class, "empty_split"),
                                        (make_val_only, "cannot_split"), (make_near_duplicate_pairs, "empty_split")])
def test_the_blocking_reason_is_the_error_training_stops_with(tmp_path, make, code):
    data = make(tmp_path / "data")
    report = audit_dataset(data, workspace_dir=tmp_path / "ws", min_size=8)
    expected = training_error(data, tmp_path / "ws")
    assert expected and [(f.code, f.message) for f in errors(report)] == [(code, expected)]


def test_with_the_run_manifest_the_audit_checks_that_split(tmp_path):
    from core.data.ingest import resolve_dataset
    from core.data.splits import split_dataset

    data = noise_classes(tmp_path / "data", classes=2, per_class=4)
    dataset = resolve_dataset(str(data), str(tmp_path / "ws"))
    manifest = split_dataset(dataset, (0.7, 0.3, 0.0))
    assert not audit_dataset(dataset, workspace_dir=tmp_path / "ws", manifest=manifest, min_size=8).blocks_training
    no_val = replace(manifest, rows=tuple(replace(r, split="train") for r in manifest.rows))
    [error] = errors(audit_dataset(dataset, workspace_dir=tmp_path / "ws", manifest=no_val, min_size=8))
    assert error.message == f"{dataset.root}: the train and val splits must both hold images (train 8, val 0)"


def test_a_fine_dataset_is_not_blocked_and_trains(tmp_path):
    data = noise_classes(tmp_path / "data", classes=3, per_class=3)
    report = audit_dataset(data, workspace_dir=tmp_path / "ws", min_size=8)
    assert not errors(report) and "Nothing blocks training." in format_report(report)
    assert training_error(data, tmp_path / "ws") is None
