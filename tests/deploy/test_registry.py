"""The model registry: immutable versions (hashed, read-only, never overwritten, tampering detected), aliases
that move with a history, rollback, refs, and two writer processes at once."""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import sqlite3
import stat

import pytest

from core.deploy.bundle import BUNDLE_FORMAT, Bundle, BundleError
from core.deploy.registry import NotInRegistry, Registry, RegistryError, VersionChanged, parse_ref
from core.errors import StudioError


def write_bundle(folder: str, run_id: str = "run-1", payload: bytes = b"onnx-bytes", status: str = "ok",
                 metrics: dict | None = None, extra_files: dict | None = None) -> str:
    """A tiny fake bundle: enough for the registry (it never runs the model)."""
    os.makedirs(folder, exist_ok=True)
    contents = {"model.onnx": payload, "card.md": f"# {run_id}\n".encode(), "predict.py": b"print('hi')\n",
                **(extra_files or {})}
    for name, data in contents.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    info = {"format": BUNDLE_FORMAT, "status": status, "run_id": run_id, "model_format": "onnx",
            "model_file": "model.onnx", "classes": ["cat", "dog"], "architecture_name": "tiny",
            "preprocessing": {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "colour_mode": "RGB"},
            "parity": {"max_abs_logit_diff": 1e-6, "top1_identical": True},
            "metrics": metrics if metrics is not None else {"test_accuracy": 0.9},
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}}
    if status != "ok":
        info["error"] = "parity failed: max abs logit diff 0.3"
    with open(os.path.join(folder, "bundle.json"), "w") as f:
        json.dump(info, f)
    return folder


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(str(tmp_path / "workspace" / "registry"))


@pytest.fixture
def bundles(tmp_path):
    """Three different bundles b1, b2, b3 (runs run-1..3, accuracies 0.81..0.83)."""
    return [write_bundle(str(tmp_path / f"b{i}"), f"run-{i}", f"weights-{i}".encode(),
                         metrics={"test_accuracy": 0.8 + i / 100, "macro_f1": 0.7 + i / 100}) for i in (1, 2, 3)]


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- immutability
def test_register_copies_every_file_hashed_and_read_only(reg, bundles):
    v = reg.register(bundles[0], "defects", note="first", actor="ana")
    assert (v.name, v.version, v.run_id, v.note, v.created_by) == ("defects", 1, "run-1", "first", "ana")
    assert v.path == os.path.join(reg.root, "defects", "1") and v.source == os.path.abspath(bundles[0])
    assert sorted(v.files) == ["bundle.json", "card.md", "model.onnx", "predict.py"]
    for rel, digest in v.files.items():
        stored = os.path.join(v.path, rel)
        assert digest == _sha(stored) == _sha(os.path.join(bundles[0], rel))
        assert not os.stat(stored).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not os.stat(v.path).st_mode & stat.S_IWUSR  # nothing can be added to the folder either
    assert v.info["metrics"] == {"test_accuracy": 0.81, "macro_f1": 0.71} and v.info["classes"] == ["cat", "dog"]
    assert v.info["model_format"] == "onnx" and v.info["parity"]["top1_identical"] is True
    assert isinstance(v.bundle(), Bundle) and v.bundle().classes == ("cat", "dog")
    assert v.verify() is v and reg.verify("defects", 1).version == 1
    assert not [n for n in os.listdir(reg.root) if n.startswith(".tmp")]  # the temporary folder is gone
    json.dumps(v.to_dict())


def test_register_refuses_a_failed_export_a_changed_bundle_and_files_outside_it(reg, tmp_path):
    with pytest.raises(BundleError, match="failed its parity check"):
        reg.register(write_bundle(str(tmp_path / "failed"), status="failed"), "m")
    changed = write_bundle(str(tmp_path / "changed"))
    with open(os.path.join(changed, "model.onnx"), "ab") as f:
        f.write(b"!")
    with pytest.raises(BundleError, match="model.onnx changed since export"):
        reg.register(changed, "m")
    outside = write_bundle(str(tmp_path / "outside"))
    (tmp_path / "secret").write_bytes(b"s")
    info = json.loads((tmp_path / "outside" / "bundle.json").read_text())
    info["files"]["../secret"] = _sha(str(tmp_path / "secret"))
    (tmp_path / "outside" / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="outside the bundle"):
        reg.register(outside, "m")
    assert reg.list_models() == [] and [n for n in os.listdir(reg.root) if not n.startswith("registry.db")] == []


def test_register_never_overwrites_a_folder_and_the_database_refuses_edits(reg, bundles):
    first = reg.register(bundles[0], "m")
    leftover = os.path.join(reg.root, "m", "2")  # as if a register was killed between its rename and its commit
    os.makedirs(leftover)
    with open(os.path.join(leftover, "model.onnx"), "wb") as f:
        f.write(b"half")
    second = reg.register(bundles[1], "m")
    assert second.version == 2 and second.verify().run_id == "run-2"
    orphans = os.listdir(os.path.join(reg.root, ".orphaned"))
    assert len(orphans) == 1 and orphans[0].startswith("m-2-")
    with open(os.path.join(reg.root, ".orphaned", orphans[0], "model.onnx"), "rb") as f:
        assert f.read() == b"half"
    first.verify()  # untouched
    con = sqlite3.connect(reg.db_path, isolation_level=None)  # autocommit: a refused statement holds no lock
    for sql in ("UPDATE versions SET run_id = 'x'", "DELETE FROM versions"):
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            con.execute(sql)
    reg.set_alias("m", "champion", 1)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE alias_history SET to_version = 2")
    con.close()
    assert [v["run_id"] for v in reg.versions("m")] == ["run-1", "run-2"]


def test_a_tampered_stored_version_is_detected(reg, bundles):
    v = reg.register(bundles[0], "m")
    model = os.path.join(v.path, "model.onnx")
    os.chmod(v.path, 0o755)
    os.chmod(model, 0o644)
    with open(model, "r+b") as f:
        f.write(b"X")
    with pytest.raises(VersionChanged, match="model.onnx changed") as caught:
        reg.verify("m", 1)
    assert isinstance(caught.value, StudioError) and "do not serve it" in str(caught.value)
    with open(model, "wb") as f:  # put the bytes back: verified again
        f.write(b"weights-1")
    reg.verify("m", 1)
    with open(os.path.join(v.path, "extra.bin"), "wb") as f:
        f.write(b"x")
    os.remove(os.path.join(v.path, "card.md"))
    with pytest.raises(VersionChanged, match=r"card.md missing; extra.bin added"):
        reg.resolve("m:1").verify()


def test_the_same_bundle_twice_is_a_new_version_that_names_the_first(reg, bundles):
    assert reg.register(bundles[0], "m").same_content_as is None
    assert reg.register(bundles[1], "m").same_content_as is None
    again = reg.register(bundles[0], "m")
    assert again.version == 3 and again.same_content_as == 1 and again.files == reg.get_version("m", 1).files


def test_model_names_are_validated(reg, bundles):
    for bad in ("", "../x", "a/b", "a b", "a:b", "a@b", ".hidden", "x" * 65, "registry.db", "-x", "é"):
        with pytest.raises(RegistryError, match="is not allowed"):
            reg.register(bundles[0], bad)
    reg.register(bundles[0], "Line-3.cam_A")
    with pytest.raises(RegistryError, match="differs in more than case"):
        reg.register(bundles[0], "line-3.cam_a")


# --- aliases, history, rollback
def test_aliases_move_and_every_move_is_in_the_history(reg, bundles):
    for b in bundles:
        reg.register(b, "m")
    first = reg.set_alias("m", "champion", 1, reason="first model", actor="ana")
    assert first["from_version"] is None and first["to_version"] == 1 and first["changed"]
    reg.set_alias("m", "champion", "2", reason="better F1", actor="bo")
    reg.set_alias("m", "challenger", 3, actor="bo")
    same = reg.set_alias("m", "champion", 2, reason="again")
    assert same["changed"] is False and same["id"] is None  # no move, no row
    assert reg.aliases("m") == {"challenger": 3, "champion": 2}
    assert reg.resolve("m").version == 2 and reg.resolve("m").aliases == ("champion",)
    history = reg.history("m")
    assert [(h["alias"], h["from_version"], h["to_version"]) for h in history] == [
        ("challenger", None, 3), ("champion", 1, 2), ("champion", None, 1)]  # newest first
    assert history[1]["reason"] == "better F1" and history[1]["actor"] == "bo" and history[1]["kind"] == "move"
    assert history[2]["at"] <= history[1]["at"] <= history[0]["at"]
    assert [h["to_version"] for h in reg.history("m", "champion")] == [2, 1]
    with pytest.raises(NotInRegistry, match=r"no version 9; its versions: 1, 2, 3"):
        reg.set_alias("m", "champion", 9)
    with pytest.raises(NotInRegistry, match="no model 'nope'"):
        reg.set_alias("nope", "champion", 1)
    for bad in ("latest", "1", "a b", "x@y", "", "a" * 65):
        with pytest.raises(RegistryError, match="is not allowed"):
            reg.set_alias("m", bad, 1)
    assert len(reg.history("m")) == 3


def test_rollback_undoes_the_latest_move_and_twice_goes_forward_again(reg, bundles):
    for b in bundles:
        reg.register(b, "m")
    reg.set_alias("m", "champion", 1)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("m")
    reg.set_alias("m", "champion", 2)
    reg.set_alias("m", "champion", 3, reason="promote 3")
    back = reg.rollback("m", reason="3 misreads scratches", actor="ana")
    assert (back["from_version"], back["to_version"], back["kind"]) == (3, 2, "rollback")
    assert reg.alias_version("m", "champion") == 2 and reg.resolve("m@champion").version == 2
    assert reg.history("m", "champion")[0]["reason"] == "3 misreads scratches"
    forward = reg.rollback("m")
    assert (forward["from_version"], forward["to_version"]) == (2, 3) and "rollback of 3 -> 2" in forward["reason"]
    assert [(h["from_version"], h["to_version"]) for h in reg.history("m", "champion")] == [
        (2, 3), (3, 2), (2, 3), (1, 2), (None, 1)]
    with pytest.raises(NotInRegistry, match="no alias 'challenger' to roll back"):
        reg.rollback("m", "challenger")
    with pytest.raises(NotInRegistry, match="no model 'other'"):
        reg.rollback("other")


# --- refs and reading
def test_resolve_every_ref_form_and_clear_errors(reg, bundles):
    for b in bundles:
        reg.register(b, "m")
    assert reg.resolve("m").version == 3  # no champion yet: the latest
    reg.set_alias("m", "champion", 1)
    reg.set_alias("m", "challenger", 2)
    assert reg.resolve("m").version == 1
    assert reg.resolve("m@challenger").version == 2 and reg.resolve("m@latest").version == 3
    assert [reg.resolve(r).version for r in ("m:2", "m/2", "models:/m/2", " m:2 ", "m:v2")] == [2] * 5
    assert parse_ref("m@champion") == ("m", "champion", None) and parse_ref("m:3") == ("m", None, 3)
    reg.register(bundles[0], "other")
    with pytest.raises(NotInRegistry, match=r"no model 'nope' in the registry at .*; models: m, other") as caught:
        reg.resolve("nope@champion")
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, StudioError)
    with pytest.raises(NotInRegistry, match=r"no alias 'prod'; its aliases: challenger -> 2, champion -> 1"):
        reg.resolve("m@prod")
    with pytest.raises(NotInRegistry, match=r"no version 7; its versions: 1, 2, 3"):
        reg.resolve("m:7")
    for bad in ("m:x", "m:0", "m:-1", "m@", "a b", ""):
        with pytest.raises(RegistryError):
            reg.resolve(bad)
    empty = Registry(reg.root + "-empty")
    with pytest.raises(NotInRegistry, match="it is empty"):
        empty.resolve("m")


def test_alias_version_is_one_cheap_query(reg, bundles):
    assert reg.alias_version("m") is None and reg.alias_version("m", None) is None
    reg.register(bundles[0], "m")
    reg.register(bundles[1], "m")
    assert reg.alias_version("m") is None and reg.alias_version("m", None) == 2
    assert reg.alias_version("m", "latest") == 2
    reg.set_alias("m", "champion", 1)
    assert reg.alias_version("m") == 1 and reg.alias_version("m", None) == 1
    other = Registry(reg.root)  # another process's view: moves are seen at once
    other.set_alias("m", "champion", 2)
    assert reg.alias_version("m", "champion") == 2


def test_show_and_list_are_plain_json(reg, bundles):
    for b in bundles:
        reg.register(b, "m", note=os.path.basename(b))
    reg.register(write_bundle(os.path.join(os.path.dirname(bundles[0]), "b4"), "run-4", b"w4",
                              metrics={"test_accuracy": 0.9, "ece": 0.02}), "m")
    reg.set_alias("m", "champion", 3)
    shown = json.loads(json.dumps(reg.show("m")))
    assert shown["metric_names"] == ["ece", "macro_f1", "test_accuracy"]
    assert [v["metrics"].get("test_accuracy") for v in shown["versions"]] == pytest.approx([0.81, 0.82, 0.83, 0.9])
    assert [v["note"] for v in shown["versions"]][:3] == ["b1", "b2", "b3"]
    assert shown["versions"][2]["aliases"] == ["champion"] and shown["versions"][0]["model_format"] == "onnx"
    assert shown["aliases"][0]["alias"] == "champion" and shown["aliases"][0]["version"] == 3
    assert len(shown["history"]) == 1
    reg.register(bundles[0], "another")
    assert [(m["name"], m["versions"], m["latest_version"], m["aliases"]) for m in reg.list_models()] == [
        ("another", 1, 1, {}), ("m", 4, 4, {"champion": 3})]
    assert len(reg.versions("m")) == 4 and reg.versions("m")[0]["files"]["model.onnx"] == _sha(
        os.path.join(bundles[0], "model.onnx"))


# --- two writers at once
def _writer(root: str, paths: list[str], tag: str, start, out) -> None:
    try:
        start.wait(60)
        reg = Registry(root)  # both processes may create the database at the same moment
        made = []
        for path in paths:
            v = reg.register(path, "shared", actor=tag)
            reg.set_alias("shared", "champion", v.version, reason=f"{tag} promotes {v.version}", actor=tag)
            reg.set_alias("shared", tag, v.version, actor=tag)
            made.append((v.version, v.run_id))
        out.put((tag, made, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        out.put((tag, [], repr(exc)))


def test_two_writer_processes_at_once_lose_nothing(tmp_path):
    n = 6
    paths = {tag: [write_bundle(str(tmp_path / f"{tag}-{i}"), f"{tag}-run-{i}", f"{tag}{i}".encode())
                   for i in range(n)] for tag in ("p0", "p1")}
    root = str(tmp_path / "registry")
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(root, paths[tag], tag, start, out)) for tag in paths]
    for p in procs:
        p.start()
    start.set()
    results = {tag: (made, error) for tag, made, error in (out.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(30)
    assert {tag: error for tag, (_, error) in results.items()} == {"p0": None, "p1": None}
    made = [v for tag in paths for v in results[tag][0]]
    assert sorted(v for v, _ in made) == list(range(1, 2 * n + 1))  # distinct, no gap
    reg = Registry(root)
    for version, run_id in made:  # each version holds the bundle its writer registered
        assert reg.verify("shared", version).run_id == run_id
    history = reg.history("shared")
    assert len(history) == 2 * 2 * n
    for alias in ("champion", "p0", "p1"):  # each move starts where the one before ended: no move lost
        moves = list(reversed(reg.history("shared", alias)))
        assert moves[0]["from_version"] is None
        assert all(b["from_version"] == a["to_version"] for a, b in itertools.pairwise(moves))
        assert reg.alias_version("shared", alias) == moves[-1]["to_version"]
    assert len(reg.history("shared", "champion")) == 2 * n
    assert sorted(m["to_version"] for m in reg.history("shared", "champion")) == list(range(1, 2 * n + 1))
