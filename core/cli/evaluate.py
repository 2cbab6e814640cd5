"""`python -m core evaluate`: the command line of the evaluation stage (core.cli.main dispatches here)."""
from __future__ import annotations

import json
import sys
from typing import Sequence

from core.cli.args import ArgParser, guarded
from core.evaluate.corruptions import CORRUPTIONS
from core.evaluate.costs import cost_model
from core.evaluate.report import EvaluationOptions, build_report
from core.evaluate.report_files import default_report_dir, summary_dict, write_report


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core evaluate RUN_ID [...]` (argv excludes "evaluate"). The last stdout line is the
    report as JSON; progress goes to stderr. Exit status 0 on success, 2 on bad input."""
    parser = ArgParser(prog="python -m core evaluate",
                     description="Evaluate a run: metrics, baselines, deployment, robustness, cost of errors.")
    parser.add_argument("run_id")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--data", help="evaluate on this data instead of the run's test split (images the run "
                        "trained or validated on are left out)")
    parser.add_argument("--drift", dest="drift_data", help="a second data source, reported as drift")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--workspace", help="where --data / --drift are ingested (default: the runs directory)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-baselines", action="store_true", help="skip majority / colour+HOG / linear probe")
    parser.add_argument("--from-scratch", action="store_true",
                        help="also train the architecture from random weights with the run's budget (slow)")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS),
                        help=f"comma-separated, or 'none' (choices: {', '.join(CORRUPTIONS)})")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--volume", type=float, help="images classified per month (enables the cost of errors)")
    parser.add_argument("--error-cost", type=float, default=0.0, help="cost of any misclassification")
    parser.add_argument("--fp-cost", help="cost of a false positive: 5, or class=5,other=2, or 1,cat=5")
    parser.add_argument("--fn-cost", help="cost of a false negative, same forms as --fp-cost")
    parser.add_argument("--currency", default="")
    parser.add_argument("--report-dir", help="where report.html, metrics.json, metrics.csv go "
                        "(default: RUNS_DIR/RUN_ID/evaluation, or evaluation-SPLIT for another split)")
    parser.add_argument("--no-report", action="store_true", help="print the JSON only, write no files")
    parser.add_argument("--seed", type=int, default=0)
    def run() -> int:
        args = parser.parse_args(argv)
        corruptions = () if args.corruptions.strip().lower() in ("", "none") else \
            tuple(c.strip() for c in args.corruptions.split(",") if c.strip())
        costs = None
        if args.volume is not None or args.fp_cost or args.fn_cost or args.error_cost:
            costs = cost_model(args.volume or 0.0, args.error_cost, args.fp_cost, args.fn_cost, args.currency)
        options = EvaluationOptions(args.split, args.data, args.drift_data, args.workspace, args.device,
                                    args.batch_size, not args.no_baselines, args.from_scratch,
                                    corruptions=corruptions, latency=not args.no_latency,
                                    latency_batch=args.latency_batch, costs=costs, seed=args.seed)
        report = build_report(args.runs_dir, args.run_id, options,
                              progress=lambda m: print(m, file=sys.stderr, flush=True))
        if not args.no_report:
            report = write_report(report, args.report_dir or default_report_dir(args.runs_dir, args.run_id, args.split))
        print(report.verdict, file=sys.stderr)
        if report.files:
            print(f"report: {report.files['html']}", file=sys.stderr)
        print(json.dumps(summary_dict(report)))
        return 0

    return guarded(run)
