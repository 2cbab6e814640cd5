"""The retrain trigger's rules, and one end-to-end warm-started retrain on tiny data that registers a challenger.

`shared_retrain` is the one retrained workspace of a test session (test_challenger uses it too): the session's
deploy run (tests/conftest.py) copied in as the champion's run, its bundle registered as digits:1 @champion, 80
new digits logged with their images and feedback (class 3 always mispredicted as 8), a retrain -> digits:2
@challenger.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest

from core.config import TrainConfig
from core.data.splits import read_manifest
from core.deploy.predlog import PredictionLog
from core.deploy.registry import Registry
from core.monitor import retrain as retrain_mod
from core.monitor.alerts import AlertStore
from core.monitor.newdata import NewData, NewExample
from core.monitor.retrain import RetrainRefused, TriggerRules, failure_focus, retrain, trigger_state
from core.runs.store import RunStore


@dataclass(frozen=True)
class FakeAlert:  # the fields core.monitor.alerts.Alert has
    kind: str
    details: dict = field(default_factory=dict)
    reason: str = ""
    id: str = "a1"
    model: str = "digits"
    opened_at: float = 0.0
    closed_at: float | None = None


def accuracy_alert(accuracy=0.80, baseline=0.90):
    return FakeAlert("accuracy", {"accuracy": accuracy, "baseline": baseline}, "accuracy fell")


def new_data(n: int) -> NewData:
    return NewData("digits", ("0", "1"), tuple(NewExample(f"{i:064x}", str(i % 2), "feedback") for i in range(n)))


RULES = TriggerRules(min_new_labels=10)


def test_too_few_labels_do_not_trigger_even_with_an_alert():
    t = trigger_state("unused", "digits", RULES, new=new_data(9), alerts=[accuracy_alert()])
    assert not t.should_retrain and t.labels_collected == 9 and t.labels_needed == 10
    assert "1 more to collect" in t.sentence() and "No retrain." in t.reasons


def test_an_alert_and_enough_labels_trigger():
    t = trigger_state("unused", "digits", RULES, new=new_data(10), alerts=[accuracy_alert()])
    assert t.should_retrain and t.reasons[-1] == "Retrain." and len(t.open_alerts) == 1
    assert "10.0% below the validation baseline" in t.sentence()
    drift = FakeAlert("drift", reason="domain classifier AUC 0.91")
    assert trigger_state("unused", "digits", RULES, new=new_data(10), alerts=[drift]).should_retrain
    off = TriggerRules(min_new_labels=10, on_drift=False)
    assert not trigger_state("unused", "digits", off, new=new_data(10), alerts=[drift]).should_retrain


def test_no_alert_or_a_small_drop_or_another_kind_does_not_trigger():
    assert not trigger_state("unused", "digits", RULES, new=new_data(50), alerts=[]).should_retrain
    small = accuracy_alert(accuracy=0.87, baseline=0.90)  # 3 points < 5
    t = trigger_state("unused", "digits", RULES, new=new_data(50), alerts=[small, FakeAlert("latency")])
    assert not t.should_retrain and "2 open alerts of other kinds or below the rule" in t.sentence()
    assert trigger_state("unused", "digits", TriggerRules(10, accuracy_drop=0.03), new=new_data(50),
                         alerts=[small]).should_retrain


def test_the_trigger_reads_the_monitors_open_alerts(tmp_path):
    root = str(tmp_path)
    store = AlertStore(root)
    assert not trigger_state(root, "digits", RULES, new=new_data(10)).should_retrain
    store.raise_or_update("digits", "accuracy", "labelled accuracy fell", {"accuracy": 0.78, "baseline": 0.90})
    store.raise_or_update("other", "drift", "drift on another model")
    t = trigger_state(root, "digits", RULES, new=new_data(10))
    assert t.should_retrain and [a.kind for a in t.open_alerts] == ["accuracy"]
    store.close("digits", "accuracy", "retrained")
    assert not trigger_state(root, "digits", RULES, new=new_data(10)).should_retrain
    store.close_connections()


def test_rules_are_checked():
    with pytest.raises(RetrainRefused):
        TriggerRules(min_new_labels=-1)
    with pytest.raises(RetrainRefused):
        TriggerRules(accuracy_drop=2.0)


def test_failure_focus_names_the_class_failures_concentrate_on():
    examples = [NewExample(f"{i:064x}", str(i % 4), "feedback", predicted="9" if i % 4 == 3 else str(i % 4),
                           width=24, height=24) for i in range(40)]
    sentences, classes, buckets = failure_focus(NewData("digits", ("0", "1", "2", "3"), tuple(examples)))
    assert classes == {"3"} and not buckets  # every image is 24 px: the size bucket is all of them
    assert any("class '3': 10 of 10 wrong" in s for s in sentences)
    even = [NewExample(f"{i:064x}", str(i % 4), "feedback", predicted="9" if i % 5 == 0 else str(i % 4))
            for i in range(40)]
    assert failure_focus(NewData("digits", ("0",), tuple(even)))[1] == set()


# ----------------------------------------------------------------------------------- end to end, once a session
_SHARED: dict = {}


def _digit_files(digits_dir: str, skip_first: int, per_class: int) -> list[tuple[str, str]]:
    """(path, label) of `per_class` digits of each class after its first `skip_first` (not in small_digits_dir)."""
    out = []
    for label in sorted(os.listdir(digits_dir)):
        names = sorted(os.listdir(os.path.join(digits_dir, label)))[skip_first:skip_first + per_class]
        out += [(os.path.join(digits_dir, label, n), label) for n in names]
    return out


def shared_retrain(tmp_path_factory, deploy_run, bundle_dir, digits_dir) -> dict:
    """The session's retrained workspace (built on first use): root, the result, the new images' sha256 -> label."""
    if _SHARED:
        return _SHARED
    runs_dir, run_id = deploy_run
    root = str(tmp_path_factory.mktemp("retrain_ws"))
    shutil.copytree(runs_dir, os.path.join(root, "runs"))  # the champion's run, read only from here on
    registry = Registry(os.path.join(root, "registry"))
    registry.set_alias("digits", "champion", registry.register(bundle_dir, "digits").version)
    log = PredictionLog.for_workspace(root)
    labels = {}
    for path, label in _digit_files(digits_dir, 30, 8):
        image = open(path, "rb").read()
        labels[hashlib.sha256(image).hexdigest()] = label
        pid = log.log({"model": "digits", "version": 1, "input_sha256": hashlib.sha256(image).hexdigest(),
                       "width": 24, "height": 24, "predicted": "8" if label == "3" else label, "confidence": 0.6,
                       "top_k": [[label, 0.6]], "latency_ms": 2.0, "embedding": np.zeros(8), "image": image})
        log.add_feedback(pid, label)
    for k in range(5):  # labelled, but the server did not keep the image
        pid = log.log({"model": "digits", "version": 1, "input_sha256": f"{k:064x}", "width": 24, "height": 24,
                       "predicted": "1", "confidence": 0.6, "top_k": [["1", 0.6]], "latency_ms": 2.0,
                       "embedding": np.zeros(8)})
        log.add_feedback(pid, "1")
    log.close()
    upload = tmp_path_factory.mktemp("upload")
    for path, label in _digit_files(digits_dir, 38, 2):  # a labelled batch a person brought
        os.makedirs(upload / label, exist_ok=True)
        shutil.copyfile(path, upload / label / os.path.basename(path))
        labels[hashlib.sha256(open(path, "rb").read()).hexdigest()] = label
    messages: list[str] = []
    alerts = AlertStore(root)  # what the monitor's check opened: labelled accuracy 10 points below validation
    alerts.raise_or_update("digits", "accuracy", "labelled accuracy fell", {"accuracy": 0.80, "baseline": 0.90})
    alerts.close_connections()
    result = retrain(root, "digits", extra=str(upload), rules=TriggerRules(min_new_labels=50), progress=messages.append)
    _SHARED.update(root=root, result=result, labels=labels, messages=messages, champion_run=run_id)
    return _SHARED


@pytest.fixture(scope="session")
def retrained(tmp_path_factory, deploy_run, bundle_dir, digits_dir) -> dict:
    return shared_retrain(tmp_path_factory, deploy_run, bundle_dir, digits_dir)


def test_retrain_registers_a_warm_started_challenger(retrained):
    root, result = retrained["root"], retrained["result"]
    registry = Registry(os.path.join(root, "registry"))
    assert registry.aliases("digits") == {"champion": 1, "challenger": 2} and result.version == 2
    assert registry.get_version("digits", 2).run_id == result.run_id
    assert result.counts["per_source"] == {"feedback": 80, "upload": 20}
    assert any("without a stored image" in reason for reason in result.counts["skipped"])

    store = RunStore(os.path.join(root, "runs"))
    run = store.get_run(result.run_id)
    assert run["status"] == "completed", run.get("error")
    config = TrainConfig.from_dict(run["config"])
    champion_ckpt = os.path.join(registry.get_version("digits", 1).path, "checkpoint.safetensors")
    assert config.checkpoint_path == champion_ckpt == result.warm_start and config.head_init == "linear_probe"
    assert config.image_size == 32 and config.epochs == 1  # the champion run's own config

    old = read_manifest(os.path.join(root, "runs", retrained["champion_run"], "manifest.json"))
    now = read_manifest(os.path.join(root, "runs", result.run_id, "manifest.json"))
    assert now.dataset_id == result.dataset_id
    old_split = {r.sha256: r.split for r in old.rows}
    new_rows = [r for r in now.rows if r.sha256 not in old_split]
    assert all(old_split[r.sha256] == r.split for r in now.rows if r.sha256 in old_split)  # old test stays test
    assert {r.sha256 for r in new_rows} == set(retrained["labels"])
    assert 0 < sum(r.split == "test" for r in new_rows) < len(new_rows) // 4
    train_new = {r.sha256 for r in new_rows if r.split == "train"}
    assert not train_new & {r.sha256 for r in new_rows if r.split == "test"}

    assert any("class '3'" in s and "repeated 2x" in s for s in result.focus)
    threes = [r for r in new_rows if r.split == "train" and r.label == "3"]
    assert threes and all(sum(x.sha256 == r.sha256 for x in new_rows) == 2 for r in threes)  # oversampled
    assert any("registered as digits@challenger" in m for m in retrained["messages"])
    assert any("10.0% below the validation baseline" in r for r in result.trigger)


def test_retrain_refuses_without_the_trigger_unless_forced(retrained, monkeypatch):
    root = retrained["root"]
    monkeypatch.setattr(retrain_mod, "_open_alerts", lambda root, model: [])
    with pytest.raises(RetrainRefused, match="No open accuracy or drift alert"):
        retrain(root, "digits", rules=TriggerRules(min_new_labels=1), progress=lambda m: None)
    monkeypatch.setattr(retrain_mod, "_open_alerts", lambda root, model: [accuracy_alert()])
    with pytest.raises(RetrainRefused, match="more to collect"):
        retrain(root, "digits", progress=lambda m: None)  # 500 needed, 80 there
    started = []
    monkeypatch.setattr(retrain_mod, "start_run", lambda *a, **k: started.append(a) or (_ for _ in ()).throw(
        RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):  # force passes the trigger and starts the run
        retrain(root, "digits", force=True, progress=lambda m: None)
    assert len(started) == 1 and started[0][0].checkpoint_path.endswith("checkpoint.safetensors")


def test_a_champion_with_adapter_layers_warm_starts_from_its_trunk_only(tmp_path):
    """load_user_weights refuses adapter.* keys ("7 unexpected (e.g. adapter.0.bias)"): the trunk is kept apart."""
    from types import SimpleNamespace

    from safetensors.torch import load_file, save_file
    from test_newdata import fake_bundle

    from core.model.backbones import WeightsError, load_backbone, load_user_weights
    from core.model.transfer import TransferModel

    model = TransferModel(load_backbone("efficientnet_lite0", pretrained=False), 3, adapter_layers=1)
    bundle = fake_bundle(str(tmp_path / "bundle"), "run-1", ["a", "b", "c"])
    weights = os.path.join(bundle, "checkpoint.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    trunk = load_backbone("efficientnet_lite0", pretrained=False).trunk
    with pytest.raises(WeightsError, match="unexpected"):
        load_user_weights(trunk, weights)
    champion = SimpleNamespace(path=bundle, name="digits", version=1, ref="digits:1")
    path, note = retrain_mod.warm_start_weights(str(tmp_path / "ws"), champion)
    assert path.endswith("warm-start-digits-v1.safetensors") and "adapter layers are fitted again" in note
    assert all(k.startswith("trunk.") for k in load_file(path))
    load_user_weights(trunk, path)  # accepted now
    assert torch_equal(trunk.state_dict(), model.trunk.state_dict())
    plain = TransferModel(load_backbone("efficientnet_lite0", pretrained=False), 3)
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, weights)
    # trunk.* and head.* only: the bundle's own file
    assert retrain_mod.warm_start_weights(str(tmp_path / "ws"), champion) == (weights, "")


def torch_equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
