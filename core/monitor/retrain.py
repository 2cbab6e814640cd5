"""When to retrain a served model, and the retrain itself: old + new data, warm-started from the champion.

The trigger (`trigger_state`): retrain when the monitor has an open alert that says the model got worse (an
"accuracy" alert whose labelled accuracy is at least `accuracy_drop` below its validation baseline, or any open
"drift" alert when `on_drift`) AND at least `min_new_labels` new labelled images are there to learn from (feedback
with stored images, plus a given batch: core.monitor.newdata). Either half alone is not enough: an alert without
labels has nothing to learn from, labels without an alert fix nothing that is broken. `force` skips the trigger.

`retrain` builds the dataset version (the champion's rows in their splits + the new images' own split), starts a
normal run with the champion run's TrainConfig, its trunk warm-started from the champion bundle's
checkpoint.safetensors (`checkpoint_path`; core.model.backbones.load_user_weights takes the studio checkpoint's
trunk.* keys and ignores head.*, but refuses adapter.*: see warm_start_weights) and its head fitted again by the
linear probe (`head_init="linear_probe"`: the class list may have grown). Targeted fine-tuning: TrainConfig's
losses weight classes by inverse frequency only (core.train.losses.class_weights), not by where the model fails,
so the classes (and image-size buckets) the champion's feedback shows failures concentrated on get their new TRAIN
images repeated (`FOCUS_REPEAT` copies) in the dataset version, and the result says so. The run is exported (ONNX,
parity-checked), registered as the next version and named by the alias "challenger"; "champion" moves only through
core.monitor.challenger.promote.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from core.config import TrainConfig
from core.deploy.bundle import Bundle
from core.deploy.export import export_run
from core.deploy.registry import Registry
from core.errors import StudioError
from core.files import atomic_write
from core.monitor.alerts import Alert, AlertStore
from core.monitor.newdata import NewData, build_dataset_version, champion_of, collect_new_data
from core.runs.launch import run_inputs, start_run
from core.runs.store import RunStore

CHALLENGER = "challenger"
FOCUS_REPEAT = 2  # copies of a focus class's new training image
FOCUS_MIN_FAILURES = 3  # a class (or size bucket) needs this many failures to be a focus ...
FOCUS_RATE_RATIO = 1.5  # ... and a failure rate this many times the overall one (and 10 points above it)
SIZE_BUCKETS = ((0, 64, "under 64 px"), (64, 224, "64-223 px"), (224, 10**9, "224 px or more"))  # shorter side


class RetrainRefused(StudioError, PermissionError):
    """The trigger says no (no alert, too few new labels); the message says what is missing. --force overrides."""


class RetrainFailed(StudioError, RuntimeError):
    """The retrained model could not become a challenger (its export failed the parity check)."""


@dataclass(frozen=True)
class TriggerRules:
    min_new_labels: int = 500  # new labelled images needed before a retrain is worth it
    accuracy_drop: float = 0.05  # an accuracy alert counts when labelled accuracy is this far below the baseline
    on_drift: bool = True  # an open drift alert counts too

    def __post_init__(self):
        if isinstance(self.min_new_labels, bool) or not isinstance(self.min_new_labels, int) or self.min_new_labels < 0:
            raise RetrainRefused(f"min_new_labels must be a whole number >= 0, got {self.min_new_labels!r}")
        if not 0.0 <= float(self.accuracy_drop) <= 1.0:
            raise RetrainRefused(f"accuracy_drop must be between 0 and 1, got {self.accuracy_drop!r}")


@dataclass(frozen=True)
class Trigger:
    should_retrain: bool
    reasons: tuple[str, ...]  # sentences: what counted, what is missing
    labels_collected: int
    labels_needed: int
    open_alerts: tuple[Any, ...] = ()  # core.monitor.alerts.Alert

    def sentence(self) -> str:
        return " ".join(self.reasons)


@dataclass(frozen=True)
class RetrainResult:
    run_id: str
    dataset_id: str
    version: int  # the challenger's registry version
    focus: tuple[str, ...]  # sentences: where failures concentrate and what was done about it
    counts: dict[str, Any]  # new data per class / source / skipped, dataset version splits
    champion_version: int | None = None
    bundle_dir: str = ""
    record: str = ""  # the dataset version's JSON (which images are new)
    trigger: tuple[str, ...] = ()
    warm_start: str = ""  # the checkpoint the trunk started from
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open_alerts(root: str, model: str) -> list[Alert]:
    store = AlertStore(root)
    try:
        return list(store.open_alerts(model))
    finally:
        store.close_connections()


def _counting(alert, rules: TriggerRules) -> str:
    """Why an open alert calls for a retrain ("" when it does not)."""
    kind, details = getattr(alert, "kind", ""), getattr(alert, "details", None) or {}
    if kind == "accuracy":
        acc, base = details.get("accuracy"), details.get("baseline")
        if acc is None or base is None:
            return ""
        if base - acc >= rules.accuracy_drop - 1e-12:
            return (f"labelled accuracy {acc:.1%} is {base - acc:.1%} below the validation baseline {base:.1%} "
                    f"(the rule: {rules.accuracy_drop:.1%} or more)")
        return ""
    if kind == "drift" and rules.on_drift:
        return f"drift: {getattr(alert, 'reason', '') or 'the inputs moved away from the training data'}"
    return ""


def trigger_state(root: str, model: str, rules: TriggerRules = TriggerRules(), *, new: NewData | None = None,
                  alerts: Sequence | None = None) -> Trigger:
    """Whether `model` should be retrained now, and why (see the module docstring for the rule). `new` (the
    collected data) and `alerts` (open alerts) are read from the workspace when not given."""
    new = collect_new_data(root, model) if new is None else new
    alerts = tuple(_open_alerts(root, model) if alerts is None else alerts)
    counted = [(a, why) for a in alerts if (why := _counting(a, rules))]
    enough = len(new) >= rules.min_new_labels
    reasons = [f"open alert: {why}." for _, why in counted]
    if not counted:
        kinds = "accuracy or drift" if rules.on_drift else "accuracy"
        others = f" ({len(alerts)} open alerts of other kinds or below the rule)" if alerts else ""
        reasons.append(f"No open {kinds} alert calls for a retrain{others}.")
    reasons.append(f"{len(new)} new labelled images of the {rules.min_new_labels} needed"
                   + ("." if enough else f": {rules.min_new_labels - len(new)} more to collect."))
    reasons += [s[0].upper() + s[1:] + "." for s in new.sentences()[1:]]
    go = bool(counted) and enough
    reasons.append("Retrain." if go else "No retrain.")
    return Trigger(go, tuple(reasons), len(new), rules.min_new_labels, alerts)


def _bucket(width: int, height: int) -> str:
    side = min(width, height)
    return next(name for lo, hi, name in SIZE_BUCKETS if lo <= side < hi)


def failure_focus(new: NewData) -> tuple[list[str], set[str], set[str]]:
    """(sentences, focus classes, focus size buckets) from the feedback: where predicted != label concentrates."""
    fed = [e for e in new.examples if e.source == "feedback" and e.predicted is not None]
    if not fed:
        return ["no feedback with predictions to find failures in: no class weighted"], set(), set()
    failed = [e for e in fed if e.predicted != e.label]
    rate = len(failed) / len(fed)
    out = [f"the champion was wrong on {len(failed)} of {len(fed)} labelled predictions ({rate:.1%})"]
    found: dict[str, set[str]] = {}
    for what, key in (("class", lambda e: e.label), ("input size", lambda e: _bucket(e.width, e.height))):
        total, bad = Counter(key(e) for e in fed), Counter(key(e) for e in failed)
        focus = {k for k in total if bad[k] >= FOCUS_MIN_FAILURES and bad[k] / total[k] >= FOCUS_RATE_RATIO * rate
                 and bad[k] / total[k] >= rate + 0.10}
        found[what] = focus
        for k in sorted(focus):
            out.append(f"failures concentrate on {what} {k!r}: {bad[k]} of {total[k]} wrong "
                       f"({bad[k] / total[k]:.0%} vs {rate:.0%} overall); its new training images are repeated "
                       f"{FOCUS_REPEAT}x")
    if not found["class"] and not found["input size"]:
        out.append("failures are spread evenly: no class or input size weighted")
    return out, found["class"], found["input size"]


def warm_start_weights(root: str, champion) -> tuple[str, str]:
    """(the weights file the trunk starts from, a sentence when it is not the bundle's own checkpoint).

    core.model.backbones.load_user_weights takes trunk.* keys and ignores head.*, but refuses any other key: a
    champion trained with adapter layers has adapter.* tensors. Then only its trunk is written to
    <root>/checkpoints/warm-start-<model>-v<version>.safetensors (the adapter is fitted again, like the head)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Bundle.load(champion.path).checkpoint_path
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
    if all(k.startswith(("trunk.", "head.")) for k in keys):
        return path, ""
    state = {k: v for k, v in load_file(path).items() if k.startswith("trunk.")}
    out = os.path.join(root, "checkpoints", f"warm-start-{champion.name}-v{champion.version}.safetensors")
    atomic_write(out, lambda tmp: save_file(state, tmp))
    others = sorted({k.split(".")[0] for k in keys} - {"trunk", "head"})
    return out, (f"the trunk starts from {champion.ref}'s weights; its {', '.join(others)} layers are fitted again "
                 f"(only the trunk was kept, in {out})")


def _config(root: str, champion_run: str, checkpoint: str, overrides) -> TrainConfig:
    config, _ = run_inputs(RunStore(os.path.join(root, "runs")), champion_run)
    config = config.replace(checkpoint_path=checkpoint, head_init="linear_probe")
    if isinstance(overrides, dict):
        config = config.replace(**overrides)
    elif overrides:
        config = config.with_overrides(list(overrides))
    return config.validate()


def retrain(root: str, model: str, extra: str | os.PathLike | None = None, rules: TriggerRules = TriggerRules(),
            force: bool = False, config_overrides: dict | Iterable[str] | None = None,
            progress: Callable[[str], None] = print, listeners: Iterable = ()) -> RetrainResult:
    """Retrain `model` on its champion's data + the new labelled data (feedback, `extra`), warm-started from the
    champion, and register the result as alias "challenger". RetrainRefused when the trigger says no (or fewer
    than rules.min_new_labels new images) and not `force`; TrainingFailed when the run fails; RetrainFailed when
    its export fails parity. `config_overrides`: a dict of TrainConfig fields or ["key=value", ...]."""
    new = collect_new_data(root, model, extra)
    trigger = trigger_state(root, model, rules, new=new)
    if not force and not trigger.should_retrain:
        raise RetrainRefused(f"{model}: {trigger.sentence()} Use force (--force) to retrain anyway.")
    champion, _ = champion_of(root, model)
    focus, classes, buckets = failure_focus(new)
    if new.new_classes:
        focus.append(f"new classes {', '.join(new.new_classes)}: the head is fitted again on "
                     f"{len(set(new.classes) | set(new.new_classes))} classes")
    repeat = {e.sha256: FOCUS_REPEAT for e in new.examples
              if e.label in classes or (e.source == "feedback" and _bucket(e.width, e.height) in buckets)}
    checkpoint, note = warm_start_weights(root, champion)
    if note:
        focus.append(note)
    config = _config(root, champion.run_id, checkpoint, config_overrides)
    progress(f"{model}: {'; '.join(new.sentences())}")
    version = build_dataset_version(root, model, new, repeat)
    progress(f"dataset version {version.dataset_id}: old {version.counts['old']}, new {version.counts['new']}")
    runs_dir = os.path.join(root, "runs")
    progress(f"training from {champion.ref}'s weights ({config.model}, {config.epochs} epochs)")
    summary = start_run(config.replace(run_name=config.run_name or f"retrain {model} from v{champion.version}"),
                        version.root, runs_dir, list(listeners), workspace_dir=root)
    run_id = summary["run_id"]
    exported = export_run(runs_dir, run_id, "onnx", progress=progress)
    if not exported.passed:
        raise RetrainFailed(f"run {run_id} trained but its ONNX export failed the parity check "
                            f"({exported.parity}); the champion is unchanged, no challenger was registered")
    registry = Registry(os.path.join(root, "registry"))
    why = f"retrained from {champion.ref} on {len(new)} new labelled images (dataset {version.dataset_id})"
    registered = registry.register(exported.bundle_dir, model, note=why)
    registry.set_alias(model, CHALLENGER, registered.version, reason=why)
    progress(f"{registered.ref} registered as {model}@{CHALLENGER}")
    counts = {**new.counts(), "dataset": version.counts, "repeated": len(version.repeated)}
    return RetrainResult(run_id, version.dataset_id, registered.version, tuple(focus), counts, champion.version,
                         exported.bundle_dir, version.record, trigger.reasons, checkpoint,
                         dict(summary.get("metrics") or {}))
