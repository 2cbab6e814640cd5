"""How long the candidate bake-off takes: the three offline EfficientNet-Lite candidates on 1,000 small images.

    python benchmarks/bench_bakeoff.py                          # default sizes (224/240/260 px), then 128 px
    python benchmarks/bench_bakeoff.py --image-sizes default    # only the models' own sizes
    python benchmarks/bench_bakeoff.py --amp off                # fp32, for comparison

Data: scikit-learn's digits (1,797 images, 10 classes) as 32x32 RGB PNG class folders, split 70/15/15 as a
run would; the bake-off uses 1,000 of the train+val images (stratified). The clock runs around
`core.plan.bakeoff.run_bakeoff` (decode once, load each candidate, extract features, fit the linear and k-NN
classifiers, bootstrap, measure latency and memory); ingesting the folder is timed separately. One
untimed warm-up loads the three weights files first, so neither configuration pays for a cold disk.
Other processes on the CPU slow torch's threads badly; the script says when it saw them, and its figures
are only worth quoting from a run without that note. Nothing is written unless --out FILE.json is given.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.model.backbones import load_backbone  # noqa: E402
from core.plan.bakeoff import BakeoffOptions, run_bakeoff  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.runtime import device_description  # noqa: E402
from core.runs.launch import load_data  # noqa: E402
from core.runtime import resolve_device  # noqa: E402

CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def export_digits(root: str, size: int = 32) -> str:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(root, str(int(label)))
        os.makedirs(folder, exist_ok=True)
        img = Image.fromarray((pixels / 16 * 255).astype(np.uint8))
        img.resize((size, size), Image.Resampling.NEAREST).convert("RGB").save(os.path.join(folder, f"{i:04d}.png"))
    return root


def others_busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over `seconds` while this one sleeps (from /proc/stat; 0 elsewhere)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)
    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError):
        return 0.0
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CANDIDATES))
    parser.add_argument("--max-images", type=int, default=1000)
    parser.add_argument("--image-sizes", default="default,128",
                        help="comma-separated configurations: 'default' (each model's own) or a side in px")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", help="a folder of class subfolders instead of the digits")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last stdout line")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    summary: dict = {"command": shlex.join(sys.orig_argv), "device": device_description(device),
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(not set)"), "runs": []}
    print(f"command: {summary['command']}")
    print(f"device: {summary['device']}; torch {summary['torch']}; OMP_WAIT_POLICY {summary['OMP_WAIT_POLICY']}")
    models = tuple(m for m in args.models.split(",") if m)
    with tempfile.TemporaryDirectory(prefix="bench-bakeoff-") as tmp:
        folder = args.data or export_digits(os.path.join(tmp, "digits"))
        t = time.perf_counter()
        data = load_data(folder, TrainConfig(), os.path.join(tmp, "workspace"))
        summary["ingest_seconds"] = time.perf_counter() - t
        print(f"data: {folder}: {len(data.classes)} classes, train {len(data.train)}, val {len(data.val)}; "
              f"ingested and split in {summary['ingest_seconds']:.1f} s (not in the figures below)")
        for name in models:  # warm-up, untimed: imports, weights files into the page cache
            load_backbone(name.split(":")[0])
        for size in args.image_sizes.split(","):
            image_size = None if size.strip() == "default" else int(size)
            options = BakeoffOptions(models, args.max_images, image_size, str(device), args.amp)
            busy = others_busy_cores()
            t = time.perf_counter()
            result = run_bakeoff(data, options, progress=lambda m: print("  " + m, flush=True))
            wall = time.perf_counter() - t
            summary["runs"].append({"image_size": size, "wall_seconds": wall, "busy_cores_before": busy,
                                    "result": result.to_dict()})
            if busy > 0.2:
                print(f"  note: other processes kept {busy:.1f} cores busy just before this run, so these timings "
                      "are pessimistic")
            print(f"\nbake-off at image size {size} ({result.dtype}; {result.n_train} train + {result.n_val} val "
                  f"images): {wall:.1f} s wall, of which decoding once {result.decode_seconds:.1f} s")
            print(f"  {'candidate':22} {'px':>4} {'val acc':>8} {'95% interval':>15} {'k-NN':>6} {'ms@1':>6} "
                  f"{'ms@32':>6} {'MiB':>6} {'params':>7} {'load':>5} {'feats':>6} {'fit':>5} {'lat':>5}")
            for c in result.candidates:
                lo, hi = c.linear_intervals["accuracy"]
                tm = c.timings
                print(f"  {c.name:22} {c.image_size:4} {c.linear['accuracy']:8.4f}   [{lo:.3f}, {hi:.3f}] "
                      f"{c.knn['accuracy']:6.3f} {c.latency_ms_batch1:6.1f} {c.latency_ms_batch:6.1f} "
                      f"{c.peak_memory_mb:6.0f} {c.parameters / 1e6:6.2f}M {tm['load']:5.1f} {tm['features']:6.1f} "
                      f"{tm['fit']:5.1f} {tm['latency']:5.1f}")
            print(f"  recommended: {result.recommendation}. {result.reason}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
