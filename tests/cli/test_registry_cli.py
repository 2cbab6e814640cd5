"""`python -m core registry ...`: exit codes, the last-line JSON, clear errors without tracebacks."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from core.cli.registry import main
from core.deploy.bundle import BUNDLE_FORMAT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bundle(folder: str, run_id: str, accuracy: float) -> str:
    """A tiny fake bundle (the registry never runs the model)."""
    os.makedirs(folder)
    files = {"model.onnx": run_id.encode(), "card.md": b"# card\n"}
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "bundle.json"), "w") as f:
        json.dump({"format": BUNDLE_FORMAT, "status": "ok", "run_id": run_id, "model_format": "onnx",
                   "model_file": "model.onnx", "classes": ["ok", "scratch"], "preprocessing": {"input_size": 32},
                   "metrics": {"test_accuracy": accuracy},
                   "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}, f)
    return folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRANSFER_STUDIO_WORKSPACE"}
    return subprocess.run([sys.executable, "-m", "core", "registry", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env, check=False)


def _last(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_register_promote_rollback_show_through_python_m_core(tmp_path):
    ws = str(tmp_path / "ws")
    b1, b2 = _bundle(str(tmp_path / "b1"), "run-1", 0.81), _bundle(str(tmp_path / "b2"), "run-2", 0.86)
    out = _cli("register", b1, "--name", "scratches", "--alias", "champion", "--workspace", ws)
    assert out.returncode == 0, out.stderr
    result = _last(out.stdout)
    assert result["status"] == "ok" and result["version"]["version"] == 1
    assert result["version"]["aliases"] == ["champion"] and result["alias_move"]["to_version"] == 1
    assert "registered scratches:1" in out.stdout
    assert os.path.isfile(os.path.join(ws, "registry", "scratches", "1", "model.onnx"))

    out = _cli("register", b2, "--name", "scratches", "--workspace", ws, "--note", "more data")
    assert out.returncode == 0 and _last(out.stdout)["version"]["version"] == 2
    out = _cli("alias", "scratches", "champion", "2", "--reason", "better", "--workspace", ws)
    move = _last(out.stdout)["alias_move"]
    assert out.returncode == 0 and (move["from_version"], move["to_version"], move["reason"]) == (1, 2, "better")

    assert main(["rollback", "scratches", "--workspace", ws, "--reason", "misses scratches"]) == 0
    out = _cli("show", "scratches", "--workspace", ws)
    assert out.returncode == 0
    shown = _last(out.stdout)["model"]
    assert [v["metrics"]["test_accuracy"] for v in shown["versions"]] == [0.81, 0.86]
    assert shown["aliases"][0] == {**shown["aliases"][0], "alias": "champion", "version": 1}
    assert [(h["from_version"], h["to_version"], h["kind"]) for h in shown["history"]] == [
        (2, 1, "rollback"), (1, 2, "move"), (None, 1, "move")]
    assert "test_accuracy" in out.stdout and "misses scratches" in out.stdout


def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    out = _cli("show", "nope", "--workspace", ws)
    assert out.returncode == 2 and "error: no model 'nope'" in out.stderr and "Traceback" not in out.stderr
    assert _last(out.stdout)["status"] == "error"

    assert main(["register", str(tmp_path / "missing"), "--name", "m", "--workspace", ws]) == 2
    assert "not an exported bundle" in capsys.readouterr().err
    assert main(["register", str(tmp_path), "--workspace", ws]) == 2  # no --name
    assert "--name" in capsys.readouterr().err
    _bundle(str(tmp_path / "b"), "run-1", 0.8)
    assert main(["register", str(tmp_path / "b"), "--name", "bad/name", "--workspace", ws]) == 2
    assert main(["register", str(tmp_path / "b"), "--name", "m", "--workspace", ws]) == 0
    capsys.readouterr()
    assert main(["alias", "m", "champion", "5", "--workspace", ws]) == 2
    assert "no version 5; its versions: 1" in capsys.readouterr().err
    assert main(["rollback", "m", "--workspace", ws]) == 2
    assert main(["list", "--workspace", ws]) == 0
    assert [m["name"] for m in _last(capsys.readouterr().out)["models"]] == ["m"]


def test_verify_exits_1_when_a_stored_file_changed(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    _bundle(str(tmp_path / "b"), "run-1", 0.8)
    assert main(["register", str(tmp_path / "b"), "--name", "m", "--workspace", ws]) == 0
    assert main(["verify", "m:1", "--workspace", ws]) == 0
    stored = os.path.join(ws, "registry", "m", "1", "model.onnx")
    os.chmod(stored, 0o644)
    with open(stored, "ab") as f:
        f.write(b"tampered")
    capsys.readouterr()
    assert main(["verify", "m", "--workspace", ws]) == 1
    captured = capsys.readouterr()
    assert "model.onnx changed" in captured.err and _last(captured.out)["status"] == "error"
