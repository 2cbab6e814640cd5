"""`python -m core audit`: the command line of the audit stage (core.cli.main dispatches here)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

from core.cli.args import USER_ERRORS, ArgParser, UsageError
from core.data.audit import audit_dataset
from core.data.audit_report import format_report
from core.data.duplicates import NEAR_DUPLICATE_DISTANCE
from core.data.store import DATASET_FILE


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core audit DATA [--json] [--workspace DIR]`` (argv excludes the word "audit").

    Exit status: 0 nothing blocks training, 2 an error-level finding blocks it, 1 the data could not
    be audited at all (bad arguments, unreadable source). With ``--json`` the last stdout line is the
    whole report as one JSON object.
    """
    parser = ArgParser(prog="python -m core audit", description="Audit an image dataset before training.")
    parser.add_argument("data", help="folder, .zip/.tar.gz/.tgz archive, CSV (path,label[,split][,group]), "
                        "stored dataset folder, or a dataset id with --workspace")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    parser.add_argument("--workspace", help="workspace to ingest into (default: a temporary folder)")
    parser.add_argument("--image-root", help="folder a CSV's paths are relative to (default: its folder)")
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="catalog model whose normalisation and input size the data is compared with")
    parser.add_argument("--min-size", type=int, help="model input side in pixels (default: the model's)")
    parser.add_argument("--near-duplicate-distance", type=int, default=NEAR_DUPLICATE_DISTANCE,
                        help="pHash Hamming distance for near duplicates (-1: off)")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return int(e.code or 0)
    started = time.perf_counter()
    try:
        from core.model.catalog import resolve_entry

        entry = resolve_entry(args.model)
        report = audit_dataset(args.data, workspace_dir=args.workspace, image_root=args.image_root,
                               model_mean=entry.mean, model_std=entry.std,
                               min_size=args.min_size or entry.input_size,
                               near_duplicate_distance=args.near_duplicate_distance)
    except (*USER_ERRORS, LookupError) as e:  # audit's own contract: 1 = could not audit, 2 = training blocked
        print(f"audit: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(e)}))
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), separators=(",", ":")))
    else:
        print(format_report(report))
        stored = args.workspace or (Path(args.data) / DATASET_FILE).is_file()
        kept = "" if stored else "; ingested into a temporary workspace, pass --workspace DIR to keep it"
        print(f"(audited in {time.perf_counter() - started:.1f} s{kept})")
    return 2 if report.blocks_training else 0
