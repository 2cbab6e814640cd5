"""core.data.ingest: layouts, safe extraction, limits, refusals, the content-addressed store, load_rgb."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import archives as archives_mod, images as images_mod, ingest as ingest_mod, layout as layout_mod
from core.data import store as store_mod
from core.data.images import load_rgb
from core.data.ingest import demo_dataset, ingest
from core.data.limits import IngestLimits
from core.data.paths import safe_relative_path
from core.data.store import list_datasets, load_dataset
from core.data.types import Dataset, ImageError, IngestError


def png_bytes(seed: int, size: int = 16, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def make_tree(root: Path, layout: dict[str, int], seed: int = 0) -> None:
    """layout: {"cat": 3, "train/dog": 2} -> that many distinct PNGs in each folder."""
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            (root / folder / f"{i}.png").write_bytes(png_bytes(seed))


def snapshot(folder: Path, exclude: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == exclude or exclude in Path(dirpath).parents:
            continue
        out.update(p for n in dirnames + filenames if Path(p := os.path.join(dirpath, n)) != exclude)
    return out


def huge_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header declares width x height (a pixel bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------ layouts


def test_class_folders_are_ingested_stored_and_reloaded(tmp_path):
    make_tree(tmp_path / "data", {"cat": 3, "dog": 2})
    ds = ingest(tmp_path / "data", tmp_path / "ws")
    assert ds.layout == "classes" and ds.labels == ("cat", "dog")
    assert [s.path for s in ds.samples] == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert all(s.split is None for s in ds.samples)
    for s in ds.samples:  # stored copies are byte-identical to the source
        assert ds.path_of(s).read_bytes() == (tmp_path / "data" / s.path).read_bytes()
    assert Path(ds.root) == (tmp_path / "ws" / "datasets" / ds.dataset_id).resolve()
    assert load_dataset(tmp_path / "ws", ds.dataset_id) == ds
    assert Dataset.from_dict(ds.to_dict()) == ds
    assert list_datasets(tmp_path / "ws") == (ds.dataset_id,)
    with pytest.raises(IngestError, match="known datasets"):
        load_dataset(tmp_path / "ws", "0" * 16)


def test_split_folders_keep_their_splits_and_ignore_other_folders(tmp_path):
    make_tree(tmp_path / "d", {"train/a": 2, "train/b": 2, "validation/a": 1, "test/b": 1, "extra/a": 1})
    ds = ingest(tmp_path / "d", tmp_path / "ws")
    assert ds.layout == "splits"
    assert {(s.split, s.label) for s in ds.samples} == {("train", "a"), ("train", "b"), ("val", "a"),
                                                        ("test", "b")}
    assert [(k.path, k.code) for k in ds.skipped] == [("extra", "not_split_folder")]


def test_hidden_and_system_entries_are_skipped_and_reported(tmp_path):
    data = tmp_path / "data"
    make_tree(data, {"cat": 2, "dog": 2, ".ipynb_checkpoints": 1, "__MACOSX/cat": 1, "cat/.cache": 1})
    (data / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "cat" / "Thumbs.db").write_bytes(b"junk")
    (data / "dog" / "._0.png").write_bytes(png_bytes(99))
    ds = ingest(data, tmp_path / "ws")
    assert ds.labels == ("cat", "dog")
    assert len(ds.samples) == 4
    assert {(s.path, s.code) for s in ds.skipped} == {
        (".DS_Store", "hidden"), (".ipynb_checkpoints/", "hidden"), ("__MACOSX/", "hidden"),
        ("cat/.cache/", "hidden"), ("cat/Thumbs.db", "hidden"), ("dog/._0.png", "hidden")}


def test_archive_with_wrapping_folder_is_unwrapped_and_hidden_entries_skipped(tmp_path):
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pets/", "")
        zf.writestr("pets/cat/a.png", png_bytes(1))
        zf.writestr("pets/dog/b.png", png_bytes(2))
        zf.writestr("pets/.DS_Store", b"junk")
        zf.writestr("__MACOSX/pets/cat/._a.png", b"junk")
        zf.writestr("__MACOSX/pets/dog/._b.png", b"junk")
    ds = ingest(archive, tmp_path / "ws")
    assert [(s.path, s.label) for s in ds.samples] == [("cat/a.png", "cat"), ("dog/b.png", "dog")]
    assert {(s.path, s.code) for s in ds.skipped} == {("__MACOSX/", "hidden"), ("pets/.DS_Store", "hidden")}


def test_tar_gz_with_splits_and_upload_of_same_bytes(tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1})
    archive = tmp_path / "d.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="wrapper")
    ds = ingest(archive, tmp_path / "ws")
    assert ds.layout == "splits" and {s.split for s in ds.samples} == {"train", "val"}
    upload = ingest(io.BytesIO(archive.read_bytes()), tmp_path / "ws", filename="d.tgz")
    assert upload.dataset_id == ds.dataset_id
    # the same content as a plain folder is the same dataset
    assert ingest(src, tmp_path / "ws").dataset_id == ds.dataset_id


def test_reingesting_an_unchanged_folder_reads_no_image_and_a_changed_one_is_read_again(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_tree(src, {"cat": 2, "dog": 2})
    first = ingest(src, tmp_path / "ws")
    reads = []
    original = images_mod._process_file
    monkeypatch.setattr(images_mod, "_process_file", lambda task: reads.append(task[2]) or original(task))
    assert ingest(src, tmp_path / "ws") == first and reads == []  # stat'ed only
    changed = next((src / "cat").iterdir())
    changed.write_bytes(png_bytes(99))
    os.utime(changed, ns=(1, 1))  # a new mtime even on a coarse clock
    second = ingest(src, tmp_path / "ws")
    assert len(reads) == 4 and second.dataset_id != first.dataset_id  # the whole folder was read again
    assert ingest(src, tmp_path / "ws", limits=IngestLimits(max_members=10)) == second and len(reads) == 8


def test_a_folder_reingested_keeps_its_own_name_and_skipped_files_when_another_stored_its_content(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    make_tree(first, {"cat": 2, "dog": 2})
    make_tree(second, {"cat": 2, "dog": 2})  # the same images (same seeds)...
    (second / "cat" / "notes.txt").write_text("not an image")  # ...and junk of its own
    a = ingest(first, tmp_path / "ws")
    b = ingest(second, tmp_path / "ws")
    assert a.dataset_id == b.dataset_id and b.source == "second" and b.skipped and not a.skipped
    assert ingest(second, tmp_path / "ws") == b  # from the folder index: still second's name and junk
    assert ingest(first, tmp_path / "ws") == a


def test_reingesting_the_same_zip_reuses_the_dataset_without_extracting(tmp_path, monkeypatch):
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/a.png", png_bytes(1))
        zf.writestr("dog/b.png", png_bytes(2))
    first = ingest(archive, tmp_path / "ws")
    stamp = (Path(first.root) / "dataset.json").stat().st_mtime_ns

    def no_extraction(*args, **kwargs):
        raise AssertionError("the archive was extracted again")

    monkeypatch.setattr(ingest_mod, "_extract_zip", no_extraction)
    again = ingest(archive, tmp_path / "ws")
    upload = ingest(io.BytesIO(archive.read_bytes()), tmp_path / "ws", filename="again.zip")
    assert again == upload == first
    assert (Path(first.root) / "dataset.json").stat().st_mtime_ns == stamp
    datasets = tmp_path / "ws" / "datasets"
    assert sorted(p.name for p in datasets.iterdir() if not p.name.startswith(".")) == [first.dataset_id]
    assert not [p for p in datasets.iterdir() if p.name.startswith(".staging")]  # staging cleaned up


# ----------------------------------------------------------------------------------- safe extraction


def test_malicious_zip_writes_nothing_outside_its_folder(tmp_path):
    workspace = tmp_path / "ws"
    target = tmp_path / "abs_evil.png"
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/good.png", png_bytes(1))
        zf.writestr("dog/good.png", png_bytes(2))
        zf.writestr("../evil.png", png_bytes(3))
        zf.writestr("cat/../../../evil2.png", png_bytes(4))
        zf.writestr(zipfile.ZipInfo(str(target)), png_bytes(5))  # absolute path
        zf.writestr("..\\evil3.png", png_bytes(6))
        zf.writestr("C:\\evil4.png", png_bytes(7))
        link = zipfile.ZipInfo("cat/link.png")
        link.external_attr = (0o120777 << 16)  # a symlink, by its mode bits
        zf.writestr(link, "../../../../etc/passwd")
    before = snapshot(tmp_path, workspace)
    ds = ingest(archive, workspace)
    assert snapshot(tmp_path, workspace) == before
    assert not target.exists()
    assert [s.path for s in ds.samples] == ["cat/good.png", "dog/good.png"]
    refused = {s.path: s.code for s in ds.skipped}
    assert refused == {"../evil.png": "unsafe_path", "cat/../../../evil2.png": "unsafe_path",
                       str(target): "unsafe_path", "..\\evil3.png": "unsafe_path",
                       "C:\\evil4.png": "unsafe_path", "cat/link.png": "link"}
    assert all(s.path in s.reason for s in ds.skipped)  # every message names its file
    stored = {str(p.relative_to(ds.root)) for p in Path(ds.root).rglob("*") if p.is_file()}
    assert stored == {"cat/good.png", "dog/good.png", "dataset.json", "probes.json"}


def test_tar_links_and_traversal_are_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in [("cat/a.png", png_bytes(1)), ("dog/b.png", png_bytes(2)),
                           ("../escape.png", png_bytes(3))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        sym = tarfile.TarInfo("cat/sym.png")
        sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(sym)
        hard = tarfile.TarInfo("dog/hard.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        tf.addfile(hard)
        fifo = tarfile.TarInfo("dog/pipe")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
    before = snapshot(tmp_path, tmp_path / "ws")
    ds = ingest(archive, tmp_path / "ws")
    assert snapshot(tmp_path, tmp_path / "ws") == before
    assert [s.path for s in ds.samples] == ["cat/a.png", "dog/b.png"]
    assert {s.path: s.code for s in ds.skipped} == {
        "cat/sym.png": "link", "dog/hard.png": "link", "../escape.png": "unsafe_path",
        "dog/pipe": "special_file"}
    assert not any(p.is_symlink() for p in Path(ds.root).rglob("*"))


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x", "C:\\x", "c:/x", "a\\..\\x", "", "a\0b"])
def test_unsafe_member_names_are_refused(name):
    with pytest.raises(ImageError) as info:
        safe_relative_path(name)
    assert info.value.code == "unsafe_path"


def test_safe_member_names_are_normalised():
    assert safe_relative_path("./cat//a.png") == "cat/a.png"


def test_zip_bomb_member_is_stopped_while_streaming(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/ok.png", png_bytes(1))
        zf.writestr("dog/ok.png", png_bytes(2))
        with zf.open("cat/bomb.png", "w") as member:  # 50 MB of zeros, ~50 KB compressed
            block = b"\0" * (1 << 20)
            for _ in range(50):
                member.write(block)
    assert archive.stat().st_size < 1_000_000
    limits = IngestLimits(max_file_bytes=1 << 20)
    ds = ingest(archive, tmp_path / "ws", limits=limits)
    assert [s.path for s in ds.samples] == ["cat/ok.png", "dog/ok.png"]
    [bomb] = ds.skipped
    assert (bomb.path, bomb.code) == ("cat/bomb.png", "too_large")
    assert "cat/bomb.png" in bomb.reason and "per-file limit" in bomb.reason
    # the same bomb against the total budget refuses the whole archive, leaving nothing behind
    with pytest.raises(IngestError, match="bomb.zip: refused, expands to more than"):
        ingest(archive, tmp_path / "ws2", limits=IngestLimits(max_total_bytes=4 << 20))
    assert list((tmp_path / "ws2" / "datasets").iterdir()) == []


def test_member_count_limit_refuses_the_archive(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(6):
            zf.writestr(f"c{i % 2}/{i}.png", png_bytes(i))
    with pytest.raises(IngestError, match="more than 5 entries"):
        ingest(archive, tmp_path / "ws", limits=IngestLimits(max_members=5))


def test_pixel_bomb_is_refused(tmp_path):
    data = tmp_path / "data"
    make_tree(data, {"cat": 1, "dog": 1})
    (data / "cat" / "bomb.png").write_bytes(huge_png(100_000, 100_000))
    ds = ingest(data, tmp_path / "ws")
    [bomb] = ds.skipped
    assert (bomb.path, bomb.code) == ("cat/bomb.png", "pixel_bomb")
    assert "cat/bomb.png" in bomb.reason
    with pytest.raises(ImageError) as info:
        load_rgb(data / "cat" / "bomb.png")
    assert info.value.code == "pixel_bomb"
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard is still on
    # a stricter configured limit refuses the 16x16 images too, so nothing usable is left
    with pytest.raises(IngestError, match="3 entries skipped: pixel_bomb"):
        ingest(data, tmp_path / "ws", limits=IngestLimits(max_image_pixels=100))


def test_broken_files_are_refused_by_decoding_not_by_extension(tmp_path):
    data = tmp_path / "data"
    make_tree(data, {"cat": 1, "dog": 1})
    good = png_bytes(50, size=64)
    (data / "cat" / "empty.png").write_bytes(b"")
    (data / "cat" / "notes.png").write_bytes(b"this is text, not a picture")
    (data / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[60:90] = b"\xff" * 30
    (data / "cat" / "corrupt.png").write_bytes(bytes(corrupt))
    (data / "dog" / "really_png.jpg").write_bytes(good)  # wrong extension, decodes fine
    ds = ingest(data, tmp_path / "ws")
    assert {s.path: s.code for s in ds.skipped} == {
        "cat/empty.png": "empty_file", "cat/notes.png": "not_image",
        "cat/truncated.png": "truncated", "cat/corrupt.png": "corrupt"}
    assert "dog/really_png.jpg" in {s.path for s in ds.samples}


def test_nothing_usable_is_a_clear_error(tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "a.txt").write_text("hi")
    with pytest.raises(IngestError, match="no usable images found"):
        ingest(tmp_path / "data", tmp_path / "ws")
    with pytest.raises(IngestError, match="not found"):
        ingest(tmp_path / "missing", tmp_path / "ws")
    (tmp_path / "x.rar").write_bytes(b"Rar!")
    with pytest.raises(IngestError, match="unsupported source"):
        ingest(tmp_path / "x.rar", tmp_path / "ws")


def test_folder_symlinks_are_refused(tmp_path):
    make_tree(tmp_path / "data", {"cat": 1, "dog": 1})
    (tmp_path / "secret.png").write_bytes(png_bytes(9))
    os.symlink(tmp_path / "secret.png", tmp_path / "data" / "cat" / "link.png")
    ds = ingest(tmp_path / "data", tmp_path / "ws")
    assert {s.path: s.code for s in ds.skipped} == {"cat/link.png": "link"}


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_with_splits_groups_and_escaping_paths(tmp_path):
    images = tmp_path / "images"
    make_tree(images, {"x": 4})
    (tmp_path / "secret.png").write_bytes(png_bytes(77))
    csv_path = images / "labels.csv"
    csv_path.write_text(
        "Path,Label,Split,Group\n"
        "x/0.png,cat,train,p1\n"
        "x/1.png,cat,validation,p2\n"
        "x/2.png,dog,,p1\n"
        "x/3.png,dog,holdout,p3\n"
        "../../etc/passwd,cat,train,\n"
        "../secret.png,dog,train,\n"
        "/etc/passwd,dog,train,\n"
        "x/nope.png,dog,train,\n"
        "x/0.png,dog,train,\n"
        ",dog,train,\n", encoding="utf-8")
    ds = ingest(csv_path, tmp_path / "ws")
    assert ds.layout == "csv"
    assert [(s.path, s.label, s.split, s.group) for s in ds.samples] == [
        ("x/0.png", "cat", "train", "p1"), ("x/1.png", "cat", "val", "p2"), ("x/2.png", "dog", None, "p1")]
    codes = {s.path: s.code for s in ds.skipped}
    assert codes["../../etc/passwd"] == "escapes_root"
    assert codes["../secret.png"] == "escapes_root"
    assert codes["/etc/passwd"] == "escapes_root"
    assert codes["x/nope.png"] == "missing_file"
    assert sorted(s.code for s in ds.skipped if s.code == "bad_row") == ["bad_row"] * 3
    assert "holdout" in " ".join(s.reason for s in ds.skipped)
    stored = {str(p.relative_to(ds.root)) for p in Path(ds.root).rglob("*.png")}
    assert stored == {"x/0.png", "x/1.png", "x/2.png"}


def test_csv_paths_relative_to_an_image_root_and_uploaded_csv(tmp_path):
    make_tree(tmp_path / "imgs", {"a": 2})
    text = b"path,label\na/0.png,cat\na/1.png,dog\n"
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "l.csv").write_bytes(text)
    ds = ingest(tmp_path / "meta" / "l.csv", tmp_path / "ws", image_root=tmp_path / "imgs")
    assert ds.labels == ("cat", "dog")
    up = ingest(io.BytesIO(text), tmp_path / "ws", filename="l.csv", image_root=tmp_path / "imgs")
    assert up.dataset_id == ds.dataset_id
    with pytest.raises(IngestError, match="image_root"):
        ingest(io.BytesIO(text), tmp_path / "ws", filename="l.csv")
    (tmp_path / "bad.csv").write_text("file,class\na,b\n")
    with pytest.raises(IngestError, match="columns 'path' and 'label'"):
        ingest(tmp_path / "bad.csv", tmp_path / "ws")


def test_labels_are_part_of_the_identity(tmp_path):
    make_tree(tmp_path / "imgs", {"a": 2})
    (tmp_path / "imgs" / "one.csv").write_text("path,label\na/0.png,cat\na/1.png,dog\n")
    (tmp_path / "imgs" / "two.csv").write_text("path,label\na/0.png,dog\na/1.png,cat\n")
    one = ingest(tmp_path / "imgs" / "one.csv", tmp_path / "ws")
    two = ingest(tmp_path / "imgs" / "two.csv", tmp_path / "ws")
    assert one.dataset_id != two.dataset_id


# -------------------------------------------------------------------------------------------- load_rgb


def _encoded(im: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


def test_load_rgb_scales_16_bit_instead_of_clipping():
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    im = load_rgb(_encoded(Image.fromarray(values), "PNG"))
    assert im.mode == "RGB"
    assert np.asarray(im)[0, :, 0].tolist() == [0, 1, 4, 128, 255]  # Pillow's convert would clip to 255


def test_load_rgb_composites_alpha_on_white_and_converts_every_mode():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white
    assert np.asarray(load_rgb(_encoded(rgba, "PNG"))).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    pixels = np.asarray(load_rgb(_encoded(pal, "PNG", transparency=0))).tolist()
    assert pixels == [[[255, 255, 255], [0, 255, 0]]]
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    red = np.asarray(load_rgb(_encoded(cmyk, "JPEG", quality=100)))
    assert red.shape == (4, 4, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60
    for mode in ("L", "LA", "1", "P", "I"):
        im = load_rgb(_encoded(Image.new(mode, (3, 2)), "PNG" if mode != "I" else "TIFF"))
        assert (im.mode, im.size) == ("RGB", (3, 2))


def test_load_rgb_applies_exif_orientation_from_paths_files_and_bytes(tmp_path):
    im = Image.new("RGB", (4, 2), (10, 20, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    path = tmp_path / "rot.jpg"
    im.save(path, "JPEG", exif=exif.tobytes())
    assert load_rgb(path).size == (2, 4)
    assert load_rgb(path.read_bytes()).size == (2, 4)
    with open(path, "rb") as fh:
        assert load_rgb(fh).size == (2, 4)
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(b"plain text")
    with pytest.raises(ImageError, match="can't be read"):
        load_rgb(tmp_path / "missing.png")


# ----------------------------------------------------------------------------------------------- demo


def test_demo_dataset_is_deterministic(tmp_path):
    first = demo_dataset(tmp_path / "ws1")
    assert len(first.samples) == 1797 and first.labels == tuple(str(i) for i in range(10))
    im = load_rgb(first.path_of(first.samples[0]))
    assert (im.mode, im.size) == ("RGB", (32, 32))
    assert demo_dataset(tmp_path / "ws1") == first  # cached
    assert demo_dataset(tmp_path / "ws2").dataset_id == first.dataset_id  # fresh workspace, same id


def test_a_process_pool_gives_the_same_dataset(tmp_path):
    make_tree(tmp_path / "data", {"cat": 3, "dog": 3})
    (tmp_path / "data" / "dog" / "bad.png").write_bytes(b"nope")
    serial = ingest(tmp_path / "data", tmp_path / "ws1")
    pooled = ingest(tmp_path / "data", tmp_path / "ws2", workers=2)
    assert pooled.dataset_id == serial.dataset_id
    assert pooled.samples == serial.samples and pooled.skipped == serial.skipped


# ------------------------------------------------------------------------------------ bombs, measured


class StagingMeter:
    """What ingest does through open(): bytes written (and the most held on disk at once) and bytes read
    back from each file it opens for reading. Installed as the `open` of every module ingest reads and writes
    files through (core.data.ingest, archives, images, layout, store), so it sees every member extraction writes
    and every byte a tar is read from."""

    def __init__(self):
        self.written, self.peak = 0, 0
        self.sizes: dict[str, int] = {}                 # path written -> bytes written to it
        self.reads: list[tuple[str, list[int]]] = []    # (path, [bytes read]) per file opened for reading

    def open(self, path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        path = os.fspath(path)
        if any(c in mode for c in "wxa+"):
            return _Counted(fh, on_write=lambda n: self._wrote(path, n))
        count = [0]
        self.reads.append((path, count))
        return _Counted(fh, on_read=lambda n: count.__setitem__(0, count[0] + n))

    def _wrote(self, path: str, n: int) -> None:
        self.written += n
        self.sizes[path] = self.sizes.get(path, 0) + n
        held = sum(size for p, size in self.sizes.items() if os.path.exists(p))  # refused members are unlinked
        self.peak = max(self.peak, held)

    def read_of(self, path: Path) -> int:
        """Bytes read through the last handle opened on `path` (the extraction's, after the hashing one)."""
        return [count[0] for p, count in self.reads if p == os.fspath(path)][-1]


class _Counted:
    def __init__(self, fh, on_write=None, on_read=None):
        self._fh, self._on_write, self._on_read = fh, on_write, on_read

    def write(self, data):
        n = self._fh.write(data)
        self._on_write(n)
        return n

    def read(self, size=-1):
        data = self._fh.read(size)
        if self._on_read:
            self._on_read(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.fixture
def meter(monkeypatch) -> StagingMeter:
    m = StagingMeter()
    for module in (ingest_mod, archives_mod, images_mod, layout_mod, store_mod):
        monkeypatch.setattr(module, "open", m.open, raising=False)
    return m


MB = 1 << 20


def write_zeros(fh, megabytes: int) -> None:
    block = b"\0" * MB
    for _ in range(megabytes):
        fh.write(block)


def test_zip_of_zero_members_is_stopped_at_its_compression_ratio(tmp_path, meter):
    archive = tmp_path / "zeros.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/ok.png", png_bytes(1))
        zf.writestr("dog/ok.png", png_bytes(2))
        for name in ("cat/z1.png", "cat/z2.png", "dog/z3.png"):
            with zf.open(name, "w") as member:  # 50 MB of zeros, ~50 KB compressed (about 1000:1)
                write_zeros(member, 50)
        packed = {i.filename: i.compress_size for i in zf.infolist()}
    size = archive.stat().st_size
    assert size < 200_000
    limits = IngestLimits()  # the defaults: 100 MB per file and 8 GB in all would let all 150 MB through
    started = time.perf_counter()
    ds = ingest(archive, tmp_path / "ws", limits=limits)
    seconds = time.perf_counter() - started
    assert [s.path for s in ds.samples] == ["cat/ok.png", "dog/ok.png"]
    assert [(s.path, s.code) for s in ds.skipped] == [
        ("cat/z1.png", "compression_bomb"), ("cat/z2.png", "compression_bomb"), ("dog/z3.png", "compression_bomb")]
    assert "200 times its compressed size" in ds.skipped[0].reason
    # bounds: a member may expand to max_ratio (200) times its compressed size before it is refused (and
    # removed), all members together to 200 times the archive; the old limits wrote all 150 MB
    member_allowance = max(MB, limits.max_ratio * max(packed.values()))
    print(f"\nzip of zeros ({size} bytes): {meter.written / MB:.1f} MB written in all, peak "
          f"{meter.peak / MB:.1f} MB on disk, {seconds:.2f} s")
    assert meter.peak <= member_allowance + 2 * 4096  # the two genuine PNGs
    assert meter.written <= limits.max_ratio * size <= 32 * MB
    assert seconds < 5


def tar_gz(path: Path, members: list[tuple[str, int]], genuine: int = 3) -> Path:
    """A tar.gz of `members` (name, megabytes of zeros) followed by `genuine` small PNGs per class."""
    with tarfile.open(path, "w:gz") as tf:
        for name, megabytes in members:
            info = tarfile.TarInfo(name)
            info.size = megabytes * MB
            tf.addfile(info, io.BytesIO(b"\0" * info.size))
        for i in range(genuine):
            for label in ("cat", "dog"):
                data = png_bytes(100 + i + (50 if label == "dog" else 0))
                info = tarfile.TarInfo(f"{label}/{i}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members", [
    [("cat/huge.png", 50)],                                    # one member over max_file_bytes
    [(f"__MACOSX/cat/._{i}.png", 2) for i in range(25)],        # hidden members, never read, 50 MB in all
], ids=["one_huge_member", "many_hidden_members"])
def test_tar_gz_stops_once_skipped_members_pass_max_skipped_bytes(tmp_path, meter, members):
    archive = tar_gz(tmp_path / "bomb.tar.gz", members)
    size = archive.stat().st_size
    limits = IngestLimits(max_file_bytes=MB, max_skipped_bytes=4 * MB)
    started = time.perf_counter()
    with pytest.raises(IngestError, match="max_skipped_bytes") as refused:
        ingest(archive, tmp_path / "ws", limits=limits)
    seconds = time.perf_counter() - started
    read = meter.read_of(archive)
    print(f"\n{len(members)} skipped member(s), {size} bytes of tar.gz: refused after reading {read} bytes "
          f"of it, {meter.written} bytes written, {seconds:.2f} s: {refused.value}")
    # decompressing to the end means reading the whole file; 4 MB of zeros is ~4 KB of gzip, read in 10 KB blocks
    assert read < size / 2 and read < 64 * 1024
    assert meter.written <= 4 * MB and seconds < 5
    assert list((tmp_path / "ws" / "datasets").iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_genuine_archive_of_images_still_ingests_under_the_bomb_limits(tmp_path, meter, kind):
    """Photos (incompressible PNGs), plus plain-colour BMPs that compress ~800:1, each small."""
    members = {f"{label}/{i}.png": png_bytes(i + (100 if label == "dog" else 0), size=64)
               for label in ("cat", "dog") for i in range(20)}
    for i, label in enumerate(("cat", "dog") * 3):
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (40 * i, 90, 200)).save(buf, "BMP")  # 196 KB, deflates to ~250 bytes
        members[f"{label}/plain{i}.bmp"] = buf.getvalue()
    archive = tmp_path / f"photos.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    ds = ingest(archive, tmp_path / "ws")
    assert sorted(s.path for s in ds.samples) == sorted(members) and ds.skipped == ()
    assert meter.written >= sum(len(d) for d in members.values())  # every member was extracted in full


def test_what_a_killed_ingest_left_is_cleaned_up_by_the_next_one(tmp_path):
    from core.data.store import clean_stale_staging

    datasets = tmp_path / "datasets"
    old, fresh = datasets / ".staging-old", datasets / ".staging-fresh"
    for folder in (old / "raw", fresh / "raw"):
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(b"x")
    (datasets / ".tmp-owners.json").write_text("{")
    day_ago = time.time() - 2 * 24 * 3600
    for path in (old / "raw" / "a.png", old / "raw", old, datasets / ".tmp-owners.json"):
        os.utime(path, (day_ago, day_ago))
    assert clean_stale_staging(datasets) == 2
    assert sorted(os.listdir(datasets)) == [".staging-fresh"]  # an ingest running now keeps its folder
