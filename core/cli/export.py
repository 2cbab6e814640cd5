"""`python -m core export RUN_ID [--format onnx|pt2] [--out DIR]`: a run's kept model as a checked bundle
(core.deploy.export). The last stdout line is the result as JSON; progress goes to stderr. Exit 0 when the
bundle passed its parity check, 1 when it was made but failed it (it is kept, marked failed), 2 on bad input."""
from __future__ import annotations

import json
import sys
from typing import Sequence

from core.cli.args import USER_ERRORS, ArgParser, UsageError, user_error


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgParser(prog="python -m core export",
                       description="Export a run's model as a bundle (model file, preprocessing, classes, model "
                                   "card, predict.py), checked against the PyTorch model on the run's test images.")
    parser.add_argument("run_id")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--format", default="onnx", choices=("onnx", "pt2"))
    parser.add_argument("--out", help="the bundle folder to create (default: RUNS_DIR/RUN_ID/exports/FORMAT-TIME)")
    parser.add_argument("--checkpoint", help="a weights file of the run to export instead of its kept model")
    parser.add_argument("--parity-images", type=int, help="check on the first N test images only (default: all)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        return user_error(exc)
    from core.deploy.export import export_run

    try:
        result = export_run(args.runs_dir, args.run_id, args.format, args.out, args.checkpoint, args.parity_images,
                            progress=lambda message: print(message, file=sys.stderr, flush=True))
    except USER_ERRORS as exc:
        return user_error(exc)
    print(f"bundle: {result.bundle_dir}", file=sys.stderr)
    print(json.dumps({"status": "ok" if result.passed else "failed", **result.to_dict()}))
    return 0 if result.passed else 1
