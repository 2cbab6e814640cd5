"""The audit of a trained run: is it good, is it better than the simple things, will it hold up, what do its
errors cost. One call, `build_report`, returns one typed `EvaluationReport`; this module owns its options,
its building and its verdict. Exporting it (HTML, JSON, CSV) is core.evaluate.report_files, the HTML page
core.evaluate.report_html, and the tables both share with the Evaluate page core.evaluate.tables.

What the report holds, all on the same test images:
1. the fine-tuned model's evaluation (core.evaluate.evaluation.summarize): metrics with bootstrap 95% intervals,
   per-class scores, confusion matrix, calibration, misclassified and highest-loss images;
2. baselines side by side (core.evaluate.baselines): majority class, colour + HOG with logistic regression, the
   frozen pretrained trunk with a linear head, optionally the same architecture trained from scratch;
   McNemar's test between the fine-tuned model and the best baseline, and a plain verdict;
3. deployment figures measured on this device (core.evaluate.latency, timed by core.evaluate.latency_child);
4. accuracy under corruptions at three severities, and on a second data source when given (core.evaluate.robustness);
5. the cost of each model's errors per month, when costs are given (core.evaluate.costs).

`python -m core evaluate RUN_ID ...` is core.cli.evaluate.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.data.ingest import DATASET_FILE, resolve_dataset
from core.data.splits import read_manifest, stratified_subset
from core.evaluate import baselines as bl
from core.evaluate.corruptions import CORRUPTIONS, SEVERITIES, CorruptionError
from core.evaluate.costs import CostModel, ModelCost, error_costs
from core.evaluate.evaluation import (
    EvaluationError,
    Predictions,
    RunEvaluation,
    best_checkpoint,
    predict_images,
    recorded_baseline,
    summarize,
)
from core.evaluate.latency import DeploymentProfile
from core.evaluate.latency_child import deployment_profile
from core.evaluate.robustness import DriftResult, RobustnessResult, corruption_sweep, drift, drift_images
from core.model.backbones import load_backbone
from core.model.cache import build_cache
from core.model.checkpoint import load_model
from core.runs.launch import MANIFEST_FILE, run_inputs
from core.runs.store import RunStore
from core.runtime import device_description, resolve_amp, resolve_device
from core.stats import McNemarResult, mcnemar
from core.train.outcome import PROBE

FINE_TUNED = "fine-tuned"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvaluationOptions:
    split: str = "test"  # the run's split to evaluate on
    data: str | None = None  # evaluate on this data instead (images the run trained/validated on are left out)
    drift_data: str | None = None  # a second source, reported as drift next to the test split
    workspace_dir: str | None = None  # where data sources are ingested (default: the runs directory)
    device: str = "auto"
    batch_size: int = 64
    baselines: bool = True  # majority class, colour + HOG, linear probe (seconds to a minute)
    from_scratch: bool = False  # also train the architecture from random weights with the run's budget (slow)
    max_baseline_train: int = 10_000  # baselines fit on at most this many training images (stratified)
    corruptions: tuple[str, ...] = CORRUPTIONS  # () skips the robustness sweep
    severities: tuple[int, ...] = SEVERITIES
    latency: bool = True
    latency_batch: int = 32
    latency_budget_s: float = 1.0  # timed repeats per batch size
    costs: CostModel | None = None
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise EvaluationError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad:
            raise CorruptionError(f"unknown corruption(s) {', '.join(map(str, bad))}; choose from "
                                  f"{', '.join(CORRUPTIONS)}")
        bad = [s for s in self.severities if s not in SEVERITIES]
        if bad:
            raise CorruptionError(f"severities must be among {', '.join(map(str, SEVERITIES))}, got "
                                  f"{', '.join(map(str, bad))}")
        if self.corruptions and not self.severities:
            raise CorruptionError("pick at least one severity for the corruptions, or no corruption to skip the "
                                  "robustness sweep")
        for name in ("batch_size", "latency_batch", "max_baseline_train"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.latency_budget_s > 0:
            raise EvaluationError(f"latency_budget_s must be above 0 seconds, got {self.latency_budget_s}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvaluationOptions":
        d = dict(d)
        if isinstance(d.get("costs"), dict):
            d["costs"] = CostModel.from_dict(d["costs"])
        for key in ("corruptions", "severities"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class ModelScore:
    """One row of the side-by-side comparison."""

    name: str  # "fine-tuned", "majority class", "colour + HOG", "linear probe", "from scratch"
    kind: str  # "fine-tuned" | "baseline"
    metrics: dict[str, float]  # accuracy, macro precision/recall/F1, log_loss, ...
    intervals: dict[str, tuple[float, float]]  # bootstrap 95%: accuracy, macro_f1, log_loss
    seconds: float  # to fit (baselines) or to predict (the fine-tuned model)
    description: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvaluationReport:
    run_id: str
    model: str  # architecture name
    split: str  # "test", or "data:<source>" when evaluated on other data
    classes: tuple[str, ...]
    device: str
    evaluation: RunEvaluation  # the fine-tuned model, in full
    models: tuple[ModelScore, ...]  # fine-tuned first, then the baselines
    comparison: McNemarResult | None  # fine-tuned vs the best baseline
    fine_tuning_helped: bool | None  # None when no baseline was computed
    verdict: str  # in words, for the top of the report
    deployment: DeploymentProfile | None
    robustness: RobustnessResult | None
    drift: DriftResult | None
    costs: tuple[ModelCost, ...]
    options: EvaluationOptions
    notes: tuple[str, ...]  # what a reader should know (left-out images, subsampled baselines, ...)
    seconds: float
    files: dict[str, str] = field(default_factory=dict)  # html/json/csv paths, once written
    # model name -> predicted class of each evaluated image (evaluation.y_true's order): the costs and any
    # paired test are recomputed from these without running a model again
    predictions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    run_outcome: dict[str, Any] = field(default_factory=dict)  # the run's own verdict against its probe
    advice: tuple[dict[str, Any], ...] = ()  # core.train.advisor, from the run's curves and settings
    adaptation: str = ""  # core.train.gradients: which layer groups carried the adaptation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



# ---------------------------------------------------------------------------------------------- build
def build_report(runs_dir: str, run_id: str, options: EvaluationOptions = EvaluationOptions(),
                 progress: Callable[[str], None] = lambda message: None) -> EvaluationReport:
    """Evaluate a finished run against its baselines, on this device; see the module docstring."""
    started = time.time()
    store = RunStore(runs_dir)
    weights = best_checkpoint(store, run_id)
    config, data = run_inputs(store, run_id)
    model, pre, meta = load_model(weights)
    classes = tuple(meta["classes"])
    device = resolve_device(options.device)
    workspace = options.workspace_dir or runs_dir
    seen = _seen_sha256(store, run_id)
    notes: list[str] = []
    cpu = torch.device("cpu")

    # 1. the images evaluated on, decoded once (the sweep re-predicts them 15 times)
    if options.data:
        paths, labels, excluded, unknown = drift_images(stored_source(options.data, workspace), classes, seen,
                                                        workspace)
        split_name = f"data:{options.data}"
        left_out = f"; unknown classes left out: {', '.join(unknown)}" if unknown else ""
        notes.append(f"evaluated on {options.data}: {len(paths)} images; {excluded} left out as copies of the "
                     f"run's train/val images{left_out}")
    else:
        part = getattr(data, options.split, None)
        if part is None or not len(part):
            raise EvaluationError(f"run {run_id} has no {options.split!r} split; evaluate on 'val' or give data "
                                  "with a test set (--data)")
        paths, labels, split_name = list(part.paths), list(part.labels), options.split
    y_true = np.asarray(labels, dtype=np.int64)
    progress(f"decoding {len(paths)} {split_name} images")
    test_images = build_cache(paths, pre, cpu)

    # 2. the fine-tuned model
    t0 = time.time()
    probs = predict_images(model, pre, test_images, device, options.batch_size)
    pred = Predictions(classes, tuple(paths), y_true, probs)
    recorded = recorded_baseline(store, run_id, split_name) if not options.data else {}
    evaluation = summarize(pred, run_id, split_name, recorded, n_boot=options.n_boot, seed=options.seed)
    summary = store.get_run(run_id)["summary"] or {}
    outcome = summary.get("outcome") or {}
    kept_probe = outcome.get("kept") == PROBE or meta.get("kept") == PROBE
    scores = [_score(FINE_TUNED, FINE_TUNED, evaluation, time.time() - t0,
                     f"the run's kept model: its linear probe (fine-tuning did not beat it on validation), run "
                     f"{run_id}" if kept_probe else f"{meta['architecture_name']} fine-tuned (run {run_id})")]
    predicted = {FINE_TUNED: pred.y_pred}
    progress(f"fine-tuned: accuracy {evaluation.metrics['accuracy']:.4f}")

    # 3. baselines, fitted on the run's training images
    if options.baselines or options.from_scratch:
        train_idx = _stratified(np.asarray(data.train.labels), options.max_baseline_train, options.seed)
        if len(train_idx) < len(data.train):
            notes.append(f"baselines were fitted on {len(train_idx)} of the {len(data.train)} training images "
                         "(stratified sample; max_baseline_train)")
        y_train = np.asarray(data.train.labels)[train_idx]
        progress(f"decoding {len(train_idx)} training images for the baselines")
        train_images = build_cache([data.train.paths[i] for i in train_idx], pre, cpu)

        def add(name: str, kind_description: str, fit: Callable[[], np.ndarray]) -> None:
            t = time.time()
            p = fit()
            ev = summarize(Predictions(classes, tuple(paths), y_true, p), run_id, split_name,
                           n_boot=options.n_boot, seed=options.seed)
            scores.append(_score(name, "baseline", ev, time.time() - t, kind_description))
            predicted[name] = p.argmax(1)
            progress(f"{name}: accuracy {ev.metrics['accuracy']:.4f}")

        described = bl.describe()
        if options.baselines:
            add("majority class", described["majority class"],
                lambda: bl.majority_class(y_train, len(classes), len(y_true)))
            add("colour + HOG", described["colour + HOG"],
                lambda: bl.heuristic(train_images, y_train, test_images, len(classes), options.seed))

            def probe() -> np.ndarray:
                trunk = load_backbone(config.model, config.checkpoint_path).trunk
                return bl.linear_probe(trunk, pre, train_images, y_train, test_images, len(classes), device,
                                       resolve_amp(config.amp, device), options.seed)
            add("linear probe", described["linear probe"], probe)
            if recorded.get(f"{split_name}_accuracy") is not None:
                notes.append(f"the run recorded its linear probe at {split_name} accuracy "
                             f"{recorded[split_name + '_accuracy']:.4f}; "
                             f"recomputed here: {scores[-1].metrics['accuracy']:.4f} (fp32 features, per-image "
                             "predictions kept for the paired test)")
        if options.from_scratch:
            def scratch() -> np.ndarray:
                val_images = build_cache(list(data.val.paths), pre, cpu)
                net, info = bl.train_from_scratch(config, len(classes), pre, train_images, y_train, val_images,
                                                  data.val.labels, device, progress)
                notes.append(f"from scratch: {info['epochs_run']} epochs run (budget "
                             f"{config.epochs + config.unfreeze_stages * config.stage_epochs}), best at epoch "
                             f"{info['best_epoch']}, {info['seconds']:.0f} s")
                return predict_images(net, pre, test_images, device, options.batch_size)
            add("from scratch", described["from scratch"], scratch)

    # 4. the verdict: did fine-tuning beat the best baseline, beyond chance on these images?
    comparison, helped, verdict = _verdict(scores, predicted, y_true, kept_probe)
    if outcome.get("sentence"):
        notes.append(f"the run's own check against its probe: {outcome['sentence']}")

    # 5. deployment, robustness, drift, costs
    deployment = None
    if options.latency:
        progress("measuring latency and memory in a clean child process")
        # timed in a child (core.evaluate.latency_child.measure_in_child): nothing of this process (a dashboard's reruns, a
        # training job) competes with the timing; its conditions travel with the figures
        deployment = deployment_profile(model, pre.input_size, weights, device, options.latency_batch,
                                        budget_s=options.latency_budget_s)
    robustness = None
    if options.corruptions:
        robustness = corruption_sweep(model, pre, test_images, y_true, device, options.corruptions,
                                      options.severities, probs, options.batch_size, options.seed, progress)
    drift_result = None
    if options.drift_data:
        progress(f"drift: evaluating on {options.drift_data}")
        drift_result = drift(model, pre, stored_source(options.drift_data, workspace), classes, seen, workspace,
                             evaluation.metrics["accuracy"], device, run_id, options.batch_size)
        drift_result = dataclasses.replace(drift_result, source=options.drift_data)
        if drift_result.excluded_overlap:
            notes.append(f"drift: {drift_result.excluded_overlap} images of {options.drift_data} are copies of the "
                         "run's train/val images and were left out")
    report = EvaluationReport(run_id, meta["architecture_name"], split_name, classes, device_description(device),
                              evaluation, tuple(scores), comparison, helped, verdict, deployment, robustness,
                              drift_result, (), options, tuple(notes), time.time() - started,
                              predictions={name: tuple(int(v) for v in p) for name, p in predicted.items()},
                              run_outcome=outcome, advice=tuple(summary.get("advice", ())),
                              adaptation=summary.get("adaptation", ""))
    return with_costs(report, options.costs)


GENERIC_FOLDER_NAMES = ("test", "val", "valid", "validation", "train", "training", "images", "imgs", "data",
                        "dataset", "holdout")


def stored_name(source: str) -> str:
    """The name a folder given as data is stored under in the workspace (what the Dataset page lists): its own
    name, behind its parent's when its own says nothing (`flowers/test`, not a dataset called "test"). An
    archive or CSV keeps its file name, which also tells its kind."""
    path = os.path.normpath(os.path.abspath(source))
    name = os.path.basename(path)
    if os.path.isdir(path) and name.lower() in GENERIC_FOLDER_NAMES:
        parent = os.path.basename(os.path.dirname(path))
        return f"{parent}/{name}" if parent else name
    return name


def stored_source(source: str, workspace_dir: str) -> str:
    """`source` stored in the workspace under `stored_name`, as the stored dataset's folder; a stored dataset
    (its id or folder), the demo, a split manifest or a missing path as given (core.evaluate.robustness says what's wrong)."""
    if not os.path.isdir(source) or os.path.isfile(os.path.join(source, DATASET_FILE)):
        return source
    return resolve_dataset(source, workspace_dir, filename=stored_name(source)).root


def with_costs(report: EvaluationReport, costs: CostModel | None) -> EvaluationReport:
    """The same report priced with other costs (None: without costs). Computed from the per-image
    predictions the report keeps, so changing a cost runs no model again: milliseconds, not minutes."""
    options = dataclasses.replace(report.options, costs=costs)
    if costs is None:
        return dataclasses.replace(report, costs=(), options=options)
    priced = error_costs(report.evaluation.y_true, report.predictions, report.classes, costs, report.options.seed)
    return dataclasses.replace(report, costs=priced, options=options)


def progress_steps(options: EvaluationOptions) -> int:
    """How many progress messages `build_report` sends with these options (training from scratch sends
    one per epoch on top): a progress bar's denominator."""
    steps = 2  # decoding the images, the fine-tuned model
    if options.baselines or options.from_scratch:
        steps += 1 + 3 * options.baselines + options.from_scratch
    return steps + options.latency + len(options.corruptions) * len(options.severities) + bool(options.drift_data)


def _score(name: str, kind: str, ev: RunEvaluation, seconds: float, description: str) -> ModelScore:
    return ModelScore(name, kind, dict(ev.metrics), dict(ev.intervals), seconds, description)


def _verdict(scores: Sequence[ModelScore], predicted: dict[str, np.ndarray], y_true: np.ndarray,
             kept_probe: bool = False) -> tuple[McNemarResult | None, bool | None, str]:
    baselines = [s for s in scores if s.kind == "baseline"]
    if kept_probe:
        others = [s for s in baselines if s.name != "linear probe"]
        text = ("Fine-tuning did not help: it did not beat the linear probe on validation, so the run's saved model "
                f"is the probe itself (test accuracy {scores[0].metrics['accuracy']:.1%}).")
        if others:
            best = max(others, key=lambda s: (s.metrics["accuracy"], s.metrics["macro_f1"]))
            test = mcnemar(y_true, predicted[FINE_TUNED], predicted[best.name], FINE_TUNED, best.name)
            text += (f" Against the best other baseline ({best.name}, {best.metrics['accuracy']:.1%}): McNemar "
                     f"{test.method}, p = {test.p_value:.3g} on {len(y_true)} test images.")
            return test, False, text
        return None, False, text
    if not baselines:
        return None, None, "No baselines were computed, so there is nothing to say whether fine-tuning helped."
    ft = scores[0]
    best = max(baselines, key=lambda s: (s.metrics["accuracy"], s.metrics["macro_f1"]))
    test = mcnemar(y_true, predicted[FINE_TUNED], predicted[best.name], FINE_TUNED, best.name)
    a, b = ft.metrics["accuracy"], best.metrics["accuracy"]
    where = f"on {len(y_true)} test images (McNemar {test.method}, p = {test.p_value:.3g})"
    if a > b and test.significant():
        return test, True, (f"Fine-tuning helped: accuracy {a:.1%} against {b:.1%} for the best baseline "
                            f"({best.name}), a difference unlikely to be chance {where}.")
    if a > b:
        return test, False, (f"Fine-tuning did not clearly help: accuracy {a:.1%} against {b:.1%} for the best "
                             f"baseline ({best.name}), a difference that could be chance {where}. The simpler "
                             "model may serve as well; more test images would settle it.")
    if a == b:
        return test, False, (f"Fine-tuning did not help: the fine-tuned model and the best baseline ({best.name}) "
                             f"both score {a:.1%} {where}.")
    return test, False, (f"Fine-tuning did not help: the best baseline ({best.name}) scores {b:.1%}, the "
                         f"fine-tuned model {a:.1%} {where}. Prefer the baseline, or revisit the recipe "
                         "(learning rate, freeze_ratio, epochs).")


def _seen_sha256(store, run_id: str) -> set[str]:
    """Content hashes of the run's train and val images (from its split manifest)."""
    path = os.path.join(store.run_dir(run_id), MANIFEST_FILE)
    if not os.path.exists(path):
        return set()
    return {r.sha256 for r in read_manifest(path).rows if r.split in ("train", "val")}


def _stratified(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    return stratified_subset(labels, n, seed) if n and n < len(labels) else np.arange(len(labels))
