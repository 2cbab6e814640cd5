"""The engine's default recipe against a plain PyTorch loop, on the same data, split and model.

    python benchmarks/bench_train.py                     # full: 224 px, all 1,797 digits, 5 epochs
    python benchmarks/bench_train.py --epochs 2 --image-size 64 --limit-per-class 30   # quick check

Engine: `core.runs.launch.start_run` with default settings except what the flags set; its clock starts when
start_run is called, so setup (ingesting the folder into a fresh dataset store, the image cache, the
linear-probe baseline) is counted. Reference: torchvision's
usual recipe (a file-list dataset, DataLoader, transforms from the model's data config, Adam at 1e-3,
plain cross-entropy, fp32, no schedule) on the same trunk with the same frozen layer groups; its clock
starts before it loads the model. Both validate after every epoch, and that time counts too. Both use
the split `core.runs.launch.load_data` makes of the folder (checked against the split the engine's run recorded).

The key figure: how long the engine takes to first reach the reference's final val accuracy, against the
reference's total time (target: at most half). Data: scikit-learn's digits as 32x32 RGB PNG class folders,
or a folder given with --data. Nothing is written unless --out FILE.json is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.model.backbones import load_backbone  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.data.split_data import SplitData  # noqa: E402
from core.train.events import BaselineDone, EpochEnd, RunStarted  # noqa: E402
from core.model.transfer import TransferModel  # noqa: E402
from core.runs.launch import load_data, run_inputs, start_run  # noqa: E402
from core.runs.store import RunStore  # noqa: E402
from core.runtime import resolve_amp, resolve_device  # noqa: E402


AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}


def export_digits(root: str, limit_per_class: int | None = None, size: int = 32) -> str:
    """scikit-learn's 8x8 digits as `root/<digit>/<index>.png`, upscaled (NEAREST) to size x size RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        if limit_per_class is not None and counts.get(label, 0) >= limit_per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = os.path.join(root, str(label))
        os.makedirs(folder, exist_ok=True)
        img = Image.fromarray((pixels / 16 * 255).astype(np.uint8))  # digits' pixels run 0..16
        img.resize((size, size), Image.Resampling.NEAREST).convert("RGB").save(os.path.join(folder, f"{i:04d}.png"))
    return root


def engine_config(args: argparse.Namespace) -> TrainConfig:
    """The engine's defaults, except what the flags set (the reference reads its split through this too)."""
    return TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                       freeze_ratio=args.freeze_ratio, image_size=args.image_size, device=args.device)


# ------------------------------------------------------------------------------------------ the engine
def run_engine(folder: str, args: argparse.Namespace, runs_dir: str) -> dict:
    """One `start_run` with default settings; per-epoch val accuracy and wall clock from its events.

    `runs_dir` starts empty and is also the run's dataset workspace, so ingesting the folder is timed cold.
    """
    config = engine_config(args)
    result: dict = {"epochs": []}
    started = time.perf_counter()

    def listen(event) -> None:
        now = time.perf_counter() - started
        if isinstance(event, RunStarted):
            result.update(device=event.device, layer_groups=event.layer_groups, frozen_groups=event.frozen_groups,
                          run_started_seconds=now)
        elif isinstance(event, BaselineDone):
            result.update(setup_seconds=now, baseline_val_accuracy=event.metrics.get("val_accuracy"))
        elif isinstance(event, EpochEnd):
            result["epochs"].append({"epoch": event.epoch, "cumulative_seconds": now,
                                     "val_accuracy": event.metrics["val_accuracy"],
                                     "own_epoch_seconds": event.metrics["epoch_seconds"]})

    summary = start_run(config, folder, runs_dir, listeners=[listen])
    result["total_seconds"] = time.perf_counter() - started  # includes the final val + test evaluation
    result.update(run_id=summary["run_id"], status=summary["status"], cached=summary["cached"],
                  amp=AMP_NAMES[resolve_amp(config.amp, resolve_device(config.device))])
    return result


# --------------------------------------------------------------------------------------- the reference
class FileListDataset(torch.utils.data.Dataset):
    """(path, label) pairs opened with torchvision's default loader: ImageFolder, minus the folder scan,
    so the reference reads exactly the engine's train and val lists."""

    def __init__(self, paths, labels, transform):
        from torchvision.datasets.folder import default_loader

        self.paths, self.labels, self.transform, self.loader = list(paths), list(labels), transform, default_loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(self.loader(self.paths[i])), self.labels[i]


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device) -> float:
    model.eval()
    correct = seen = 0
    for x, y in loader:
        logits = model(x.to(device, non_blocking=True))
        correct += int((logits.argmax(1).cpu() == y).sum())
        seen += len(y)
    return correct / max(1, seen)


def run_reference(split: SplitData, args: argparse.Namespace) -> dict:
    """The plain loop on the engine's split: same trunk and frozen groups, torchvision transforms, Adam, fp32."""
    import timm.data
    from torchvision import transforms as T

    started = time.perf_counter()
    torch.manual_seed(0)
    device = resolve_device(args.device)

    # 1. the same trunk and head shape; freeze_ratio freezes the same forward-order prefix of layer groups.
    # bn_stats="all" makes TransferModel.train() the plain nn.Module.train() (every BatchNorm updates its
    # running stats, as in a plain loop); dropout=0.0 leaves a bare nn.Linear head over num_features.
    backbone = load_backbone(args.model)
    model = TransferModel(backbone, len(split.classes), dropout=0.0, bn_stats="all")
    frozen = model.freeze_ratio(args.freeze_ratio)
    model.to(device)

    # 2. transforms from the model's own data config, at the requested size
    data_cfg = timm.data.resolve_model_data_config(backbone.trunk)
    size = args.image_size or int(data_cfg["input_size"][-1])
    interpolation = T.InterpolationMode(data_cfg["interpolation"])
    normalize = T.Normalize(data_cfg["mean"], data_cfg["std"])
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interpolation),
                          T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val_tf = T.Compose([T.Resize(int(size / data_cfg["crop_pct"]), interpolation=interpolation),
                        T.CenterCrop(size), T.ToTensor(), normalize])
    # two workers on the CPU (the brief's setting); on a GPU machine, enough to keep the GPU fed
    workers = 2 if device.type == "cpu" else min(8, os.cpu_count() or 2)
    loader_args = {"batch_size": args.batch_size, "num_workers": workers, "pin_memory": device.type == "cuda"}
    train_loader = torch.utils.data.DataLoader(
        FileListDataset(split.train.paths, split.train.labels, train_tf), shuffle=True, **loader_args)
    val_loader = torch.utils.data.DataLoader(
        FileListDataset(split.val.paths, split.val.labels, val_tf), shuffle=False, **loader_args)

    # 3. Adam on every trainable parameter, plain cross-entropy, no schedule
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    result: dict = {"epochs": [], "setup_seconds": time.perf_counter() - started, "frozen_groups": frozen,
                    "layer_groups": len(model.groups), "num_workers": workers, "image_size": size}
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        accuracy = evaluate(model, val_loader, device)
        result["epochs"].append({"epoch": epoch, "cumulative_seconds": time.perf_counter() - started,
                                 "val_accuracy": accuracy})
    result["total_seconds"] = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------------------- reporting
def split_files(split: SplitData, workspace: str) -> list[tuple[str, int]]:
    """Train and val files relative to their dataset workspace, with labels: comparable across workspaces."""
    return [(os.path.relpath(path, workspace), label) for part in (split.train, split.val)
            for path, label in zip(part.paths, part.labels)]


def add_epoch_seconds(result: dict) -> None:
    """Seconds per epoch: the cumulative clock's steps, the first counted from the end of setup."""
    previous = result.get("setup_seconds", 0.0)
    for row in result["epochs"]:
        row["epoch_seconds"] = row["cumulative_seconds"] - previous
        previous = row["cumulative_seconds"]
    # the engine's epoch 0 only validates its starting point (the probe-initialised head): not a training epoch
    seconds = [row["epoch_seconds"] for row in result["epochs"] if row["epoch"] >= 1]
    result["mean_epoch_seconds"] = sum(seconds) / len(seconds) if seconds else None
    result["final_val_accuracy"] = result["epochs"][-1]["val_accuracy"] if result["epochs"] else None


def print_table(title: str, result: dict) -> None:
    own = "own_epoch_seconds" in (result["epochs"][0] if result["epochs"] else {})
    print(f"\n{title}")
    header = f"{'epoch':>5}  {'cum s':>8}  {'epoch s':>8}  {'val acc':>7}"
    print(header + ("  engine's own epoch_seconds" if own else ""))
    print(f"{'setup':>5}  {result.get('setup_seconds', 0.0):8.1f}  {'':>8}  {'':>7}")
    for row in result["epochs"]:
        line = (f"{row['epoch']:>5}  {row['cumulative_seconds']:8.1f}  {row['epoch_seconds']:8.1f}  "
                f"{row['val_accuracy']:7.4f}")
        print(line + (f"  {row['own_epoch_seconds']:8.1f}" if own else ""))
    print(f"total {result['total_seconds']:8.1f} s")


def compare(engine: dict, reference: dict) -> dict:
    """Mean epoch times and their ratio; when the engine first reaches the reference's final accuracy."""
    target = reference["final_val_accuracy"]
    reached = next((row for row in engine["epochs"] if row["val_accuracy"] >= target), None)
    baseline = engine.get("baseline_val_accuracy")
    return {
        "mean_epoch_seconds_ratio": engine["mean_epoch_seconds"] / reference["mean_epoch_seconds"],
        "reference_final_val_accuracy": target,
        "engine_reached_at_epoch": reached["epoch"] if reached else None,
        "engine_seconds_to_reach": reached["cumulative_seconds"] if reached else None,
        "reference_total_seconds": reference["epochs"][-1]["cumulative_seconds"],
        "time_to_reach_ratio": reached["cumulative_seconds"] / reference["epochs"][-1]["cumulative_seconds"]
        if reached else None,
        "baseline_already_reached": baseline is not None and baseline >= target,
        "target_ratio": 0.5,
    }


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{device.type} ({model}, {os.cpu_count()} logical cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--freeze-ratio", type=float, default=0.75)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own (224 for lite0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", help="a folder of class subfolders (or train/ val/ test/); default: digits")
    parser.add_argument("--limit-per-class", type=int, default=None,
                        help="export only this many digits per class (quick checks; not with --data)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last stdout line")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args(argv)
    if args.data and args.limit_per_class is not None:
        parser.error("--limit-per-class subsamples the exported digits; it cannot be combined with --data")
    if args.skip_engine and args.skip_reference:
        parser.error("--skip-engine and --skip-reference together leave nothing to run")

    device = resolve_device(args.device)
    summary: dict = {"command": shlex.join(sys.orig_argv), "device": device_description(device),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    print(f"command: {summary['command']}")
    print(f"device: {summary['device']}; torch {summary['torch']}; torch.get_num_threads() = {summary['threads']}")

    config = engine_config(args)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = args.data or export_digits(os.path.join(tmp, "digits"), args.limit_per_class)
        # the split both runs use, through the engine's own data path (a dataset store of its own, so the
        # engine's run below still ingests the folder cold); untimed: it is the reference's input
        workspace = os.path.join(tmp, "workspace")
        split = load_data(folder, config, workspace)
        print(f"data: {folder}: {len(split.classes)} classes, train {len(split.train)}, val {len(split.val)}, "
              f"test {len(split.test)}")
        summary["data"] = split.describe()
        # warm-up, untimed: imports and the weights file into the page cache, so neither run pays for them
        load_backbone(args.model)

        if not args.skip_engine:
            print("running the engine ...", flush=True)
            runs_dir = os.path.join(tmp, "runs")
            engine = run_engine(folder, args, runs_dir)
            _, engine_split = run_inputs(RunStore(runs_dir), engine["run_id"])
            if split_files(engine_split, runs_dir) != split_files(split, workspace):
                raise SystemExit("the engine's run trained on a different train/val split than load_data gave; "
                                 "the comparison would not be fair (is the split seeded?)")
            add_epoch_seconds(engine)
            summary["engine"] = engine
        if not args.skip_reference:
            print("running the reference loop ...", flush=True)
            reference = run_reference(split, args)
            add_epoch_seconds(reference)
            summary["reference"] = reference

    if "engine" in summary:
        e = summary["engine"]
        print_table(f"engine (start_run, default recipe; autocast {e['amp']}, image cache: {e['cached']}, "
                    f"{e['frozen_groups']}/{e['layer_groups']} groups frozen, status {e['status']})", e)
        print(f"engine baseline (linear probe) val accuracy: {e['baseline_val_accuracy']:.4f}, ready at "
              f"{e['setup_seconds']:.1f} s ({e['run_started_seconds']:.1f} s to RunStarted: ingest, image cache, "
              f"model; then {e['setup_seconds'] - e['run_started_seconds']:.1f} s for the probe)")
    if "reference" in summary:
        r = summary["reference"]
        print_table(f"reference (plain loop: DataLoader with {r['num_workers']} workers, Adam 1e-3, fp32, "
                    f"{r['frozen_groups']}/{r['layer_groups']} groups frozen)", r)

    if "engine" in summary and "reference" in summary:
        e, r = summary["engine"], summary["reference"]
        c = summary["comparison"] = compare(e, r)
        print("\nsummary")
        print(f"  mean s/epoch: engine {e['mean_epoch_seconds']:.2f}, reference {r['mean_epoch_seconds']:.2f}, "
              f"ratio {c['mean_epoch_seconds_ratio']:.2f}")
        print(f"  final val accuracy: engine {e['final_val_accuracy']:.4f}, reference {r['final_val_accuracy']:.4f}")
        print(f"  total: engine {e['total_seconds']:.1f} s (incl. final val+test evaluation), "
              f"reference {r['total_seconds']:.1f} s")
        if c["engine_seconds_to_reach"] is None:
            best = max(row["val_accuracy"] for row in e["epochs"])
            print(f"  the engine NEVER reached the reference's final val accuracy "
                  f"({c['reference_final_val_accuracy']:.4f}) in {len(e['epochs'])} epochs (its best: {best:.4f})")
        else:
            verdict = "meets" if c["time_to_reach_ratio"] <= c["target_ratio"] else "misses"
            print(f"  time for the engine to first reach the reference's final val accuracy "
                  f"({c['reference_final_val_accuracy']:.4f}): {c['engine_seconds_to_reach']:.1f} s "
                  f"(epoch {c['engine_reached_at_epoch']}) vs reference total {c['reference_total_seconds']:.1f} s: "
                  f"ratio {c['time_to_reach_ratio']:.2f} ({verdict} the target <= {c['target_ratio']})")
        if c["baseline_already_reached"]:
            print(f"  (the engine's linear probe alone already reached it, at {e['setup_seconds']:.1f} s)")

    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
