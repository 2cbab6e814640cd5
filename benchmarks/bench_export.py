"""Export time and parity of the offline backbones: for each of efficientnet-lite0/1/2 at its own input size, a
one-epoch run on two development sets (rendered machined parts, scikit-image textures), then an ONNX export
(dynamo) and a torch.export (.pt2) of it, each with its parity check on the run's test images.

    python benchmarks/bench_export.py [--out /tmp/bench_export] [--models efficientnet_lite0,...]
                                      [--sets parts,textures]

Prints a Markdown table (docs/BENCHMARKS.md keeps the figures) and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import devsets  # noqa: E402  (benchmarks/devsets.py)

from core.config import AugmentSpec, TrainConfig  # noqa: E402
from core.deploy.export import export_run  # noqa: E402
from core.runs.launch import start_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_export")
    parser.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    parser.add_argument("--sets", default="parts,textures")
    args = parser.parse_args(argv)
    rows = []
    for set_name in args.sets.split(","):
        data = os.path.join(args.out, "data", set_name)
        if not os.path.isdir(data):
            devsets.BUILDERS[set_name](os.path.join(args.out, "data"))
        for model in args.models.split(","):
            config = TrainConfig(model=model, epochs=1, batch_size=32, augment=AugmentSpec(), crossval_folds=0,
                                 early_stopping_patience=0, group_by="names")
            started = time.perf_counter()
            summary = start_run(config, data, os.path.join(args.out, "runs"))
            train_s = time.perf_counter() - started
            for fmt in ("onnx", "pt2"):
                result = export_run(os.path.join(args.out, "runs"), summary["run_id"], fmt)
                p = result.parity
                rows.append({"set": set_name, "model": model, "format": fmt, "train_s": round(train_s, 1),
                             "export_s": result.seconds, "passed": result.passed, "n_images": p["n_images"],
                             "max_abs_logit_diff": p["max_abs_logit_diff"], "fp32_rounding": p["fp32_rounding"],
                             "tolerance": p["tolerance"], "within_1e4": p["within_1e4"],
                             "max_abs_input_diff": p["max_abs_input_diff"], "exporter": result.exporter})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| set | model | format | export s (with parity) | test images | max abs logit diff | PyTorch fp32 "
          "rounding | within 1e-4 | passed |")
    print("|---|---|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['model']} | {r['format']} | {r['export_s']:.1f} | {r['n_images']} | "
              f"{r['max_abs_logit_diff']:.2e} | {r['fp32_rounding']:.2e} | {'yes' if r['within_1e4'] else 'no'} | "
              f"{'yes' if r['passed'] else 'NO'} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
