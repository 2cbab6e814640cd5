"""core.files: atomic writes that never leave half a file, and a full disk said plainly."""
import errno
import os

import pytest

import core.files
from core.files import DiskFull, atomic_write, clean_leftovers, ensure_space, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_text(str(target), "old")

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # a kill, as far as the writer can tell

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), boom)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_becomes_one_clear_message(tmp_path, error):
    def write(tmp):
        raise error

    with pytest.raises(DiskFull, match=rf"disk full in {tmp_path} \(free .*, need 1\.0 MB\); free some space"):
        atomic_write(str(tmp_path / "w.pt"), write, size_hint=2**20)
    assert os.listdir(tmp_path) == []


def test_space_is_checked_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(core.files, "free_bytes", lambda folder: 1000)
    written = []
    with pytest.raises(DiskFull, match=r"free 1000 B, need 2\.2 KB"):  # with the 10% margin
        atomic_write(str(tmp_path / "x"), written.append, size_hint=2048)
    assert written == [] and os.listdir(tmp_path) == []


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    for name in (".tmp-abc-best.safetensors", ".tmp-x", "best.safetensors", ".trainer.lock"):
        (tmp_path / name).write_text("x")
    assert clean_leftovers(str(tmp_path)) == 2
    assert sorted(os.listdir(tmp_path)) == [".trainer.lock", "best.safetensors"]
    ensure_space(str(tmp_path), 1)  # plenty free: no error
