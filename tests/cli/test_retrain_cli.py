"""`python -m core retrain`: exit codes (0 done, 1 a run failed, 2 bad input or refused), the trigger's refusal
without enough labels, and promotion refused by the evidence. The engine's own tests train; these never do."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import export_digits

from core.cli.main import main as core_main
from core.cli.retrain import main
from core.data.ingest import ingest
from core.data.splits import split_dataset, write_manifest
from core.deploy.bundle import BUNDLE_FORMAT
from core.deploy.predlog import PredictionLog
from core.deploy.registry import Registry
from core.monitor import challenger, retrain
from core.monitor.challenger import Comparison, group
from core.train.failures import TrainingFailed


class Alert:
    kind, reason, details = "accuracy", "accuracy fell", {"accuracy": 0.7, "baseline": 0.9}


def _bundle(folder: str, run_id: str, classes) -> str:
    os.makedirs(folder)
    with open(os.path.join(folder, "model.onnx"), "wb") as f:
        f.write(run_id.encode())
    info = {"format": BUNDLE_FORMAT, "status": "ok", "run_id": run_id, "model_format": "onnx",
            "model_file": "model.onnx", "classes": list(classes),
            "files": {"model.onnx": hashlib.sha256(run_id.encode()).hexdigest()}}
    with open(os.path.join(folder, "bundle.json"), "w") as f:
        json.dump(info, f)
    return folder


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace: digits:1 @champion (a fake bundle of run-1, whose manifest splits 3 digits per class), 2 @
    challenger; 4 labelled predictions with images; an open accuracy alert."""
    root = str(tmp_path / "ws")
    manifest = split_dataset(ingest(export_digits(str(tmp_path / "d"), per_class=3), root), near_duplicate_groups=())
    registry = Registry(os.path.join(root, "registry"))
    for k in (1, 2):
        write_manifest(manifest, os.path.join(root, "runs", f"run-{k}", "manifest.json"))
        registry.register(_bundle(str(tmp_path / f"b{k}"), f"run-{k}", manifest.labels), "digits")
    registry.set_alias("digits", "champion", 1)
    registry.set_alias("digits", "challenger", 2)
    log = PredictionLog.for_workspace(root)
    for i in range(4):
        image = bytes([i]) * 40
        pid = log.log({"model": "digits", "version": 1, "input_sha256": hashlib.sha256(image).hexdigest(),
                       "width": 8, "height": 8, "predicted": "1", "confidence": 0.5, "top_k": [["1", 0.5]],
                       "latency_ms": 1.0, "embedding": np.zeros(4), "image": image})
        log.add_feedback(pid, "1")
    log.close()
    monkeypatch.setattr(retrain, "_open_alerts", lambda root, model: [Alert()])
    return root


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_usage_and_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert main(["digits", "--compare", "--rollback"]) == 2  # one action at a time


def test_refused_without_enough_labels(ws, capsys):
    assert main(["digits", "--workspace", ws, "--json"]) == 2
    out = last_json(capsys)
    assert out["status"] == "error" and "4 new labelled images of the 500 needed" in out["error"]
    assert "496 more to collect" in out["error"] and "--force" in out["error"]
    assert main(["digits", "--workspace", ws, "--check", "--min-labels", "4", "--json"]) == 0
    check = last_json(capsys)
    assert check["should_retrain"] is True and check["labels_collected"] == 4
    assert core_main(["retrain", "digits", "--workspace", ws, "--min-labels", "-3"]) == 2  # through the dispatcher
    assert main(["nosuchmodel", "--workspace", ws]) == 2


def test_exit_1_when_the_run_fails_and_0_when_it_registers(ws, capsys, monkeypatch):
    def failing(*args, **kwargs):
        raise TrainingFailed("loss became NaN")

    monkeypatch.setattr(retrain, "retrain", failing)
    assert main(["digits", "--workspace", ws, "--json", "--force"]) == 1
    assert last_json(capsys) == {"status": "failed", "error": "loss became NaN"}
    seen = {}

    def ok(root, model, **kwargs):
        seen.update(kwargs, root=root)
        return retrain.RetrainResult("run-9", "abc", 3, ("failures concentrate on class '3'",), {"total": 4})

    monkeypatch.setattr(retrain, "retrain", ok)
    assert main(["digits", "--workspace", ws, "--json", "--set", "epochs=2", "--min-labels", "3"]) == 0
    out = last_json(capsys)
    assert out["status"] == "ok" and out["version"] == 3 and out["run_id"] == "run-9"
    assert seen["config_overrides"] == ["epochs=2"] and seen["rules"].min_new_labels == 3 and not seen["force"]
    assert seen["root"] == os.path.abspath(ws)


def _comparison(a_right: int, b_right: int) -> Comparison:
    a = [True] * a_right + [False] * b_right + [True] * 300
    b = [False] * a_right + [True] * b_right + [True] * 300
    return Comparison("digits", 1, 2, {"all": group("all", np.array(a), np.array(b))}, (), {}, tuple(a), tuple(b))


def test_promote_follows_the_evidence_and_rollback_undoes_it(ws, capsys, monkeypatch):
    registry = Registry(os.path.join(ws, "registry"))
    monkeypatch.setattr(challenger, "compare_offline", lambda root, model: _comparison(30, 2))
    assert main(["digits", "--workspace", ws, "--promote"]) == 2
    assert "keep the champion" in capsys.readouterr().err and registry.alias_version("digits") == 1
    assert main(["digits", "--workspace", ws, "--compare", "--json"]) == 0  # a "keep" verdict is not an error
    assert last_json(capsys)["promote"] is False
    monkeypatch.setattr(challenger, "compare_offline", lambda root, model: _comparison(2, 30))
    assert main(["digits", "--workspace", ws, "--promote", "--json"]) == 0
    out = last_json(capsys)
    assert out["promote"] is True and out["move"]["to_version"] == 2 and registry.alias_version("digits") == 2
    assert registry.history("digits", "champion")[0]["reason"] == out["decision"]
    assert main(["digits", "--workspace", ws, "--rollback"]) == 0
    assert registry.alias_version("digits") == 1
