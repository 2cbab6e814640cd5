"""`python -m core bakeoff`: the command line of the bake-off stage (core.cli.main dispatches here)."""
from __future__ import annotations

import json
import sys
from typing import Sequence

from core.cli.args import ArgParser, guarded
from core.files import jsonable
from core.plan.bakeoff import DEFAULT_MAX_IMAGES, BakeoffOptions, bakeoff


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core bakeoff DATA --models a,b,c` (argv excludes "bakeoff"). Progress on stderr; the last
    stdout line is the BakeoffResult as JSON. Exit status 0 on success, 2 on bad input."""
    parser = ArgParser(prog="python -m core bakeoff",
                     description="Rank 2-5 candidate backbones on a subset of your data before training.")
    parser.add_argument("data", help="as for training: folder, .zip/.tar.gz, CSV, dataset id, manifest, or 'demo'")
    parser.add_argument("--models", required=True,
                        help="comma-separated candidates, e.g. efficientnet_lite0,efficientnet_lite1; "
                             "NAME:random for random weights")
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES)
    parser.add_argument("--image-size", type=int, help="input side for every candidate (default: each model's own)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    parser.add_argument("--workspace", default="runs", help="where the data is ingested (default: runs)")
    parser.add_argument("--knn-k", type=int, default=10)
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--latency-budget", type=float, default=1.0, help="seconds of timed repeats per batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--html", help="also write the accuracy-vs-latency chart to this HTML file (offline)")
    def run() -> int:
        args = parser.parse_args(argv)
        options = BakeoffOptions(tuple(m for m in args.models.split(",") if m.strip()), args.max_images,
                                 args.image_size, args.device, args.amp, knn_k=args.knn_k,
                                 latency_batch=args.latency_batch, latency_budget_s=args.latency_budget,
                                 seed=args.seed)
        result = bakeoff(args.data, options, args.workspace, progress=lambda m: print(m, file=sys.stderr, flush=True))
        if args.html:
            from core.evaluate.figures import bakeoff_figure

            bakeoff_figure(result).write_html(args.html, include_plotlyjs=True)
        print(f"recommended: {result.recommendation}. {result.reason}", file=sys.stderr)
        print(json.dumps(jsonable(result.to_dict())))
        return 0

    return guarded(run)
