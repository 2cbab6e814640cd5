"""`python -m core monitor MODEL [--workspace W] [--since 7d|24h|ISO] [--until ...] [--json] [--retrain-if-needed]`:
one monitoring pass over a served registry model (core.monitor.check): per-window figures, drift, and the alerts
it opens, updates or closes, each with its reason in plain English.

Exit codes, for cron: 0 no alert is open after the check, 3 at least one is open, 2 bad input (an unknown model, a
bad --since), 1 a retrain asked for with --retrain-if-needed failed. With --json the last stdout line is the report
as JSON (with "retrain" when asked for); otherwise a readable report.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from core.cli.args import USER_ERRORS, ArgParser, guarded

EXIT_ALERT = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgParser(prog="python -m core monitor",
                       description="Check a served model: accuracy from feedback, confidence, latency and drift of "
                       "its recent predictions against what it was trained on; open alerts exit 3.")
    parser.add_argument("model", help="a registry model name (its champion, else its latest version, is checked)")
    parser.add_argument("--workspace", help="the workspace holding registry/, serving/ and monitor/ (default: "
                        "TRANSFER_STUDIO_WORKSPACE, else ./workspace)")
    parser.add_argument("--since", default="7d", help="start of the period: 7d, 24h, 30m before now, or an ISO "
                        "date/time (UTC unless it says otherwise); default 7d")
    parser.add_argument("--until", help="end of the period (default: now), same forms as --since")
    parser.add_argument("--windows", type=int, help="cut the period into N windows (default: hourly up to two "
                        "days, daily beyond)")
    parser.add_argument("--min-labels", type=int, default=30, help="labelled predictions needed to judge accuracy")
    parser.add_argument("--latency-budget-ms", type=float, help="alert when the recent p99 latency is above this")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    parser.add_argument("--retrain-if-needed", action="store_true", help="after the check, ask the retraining "
                        "trigger (core.monitor.retrain) and retrain when it says so")
    return guarded(lambda: _run(parser.parse_args(list(sys.argv[1:] if argv is None else argv))))


def _run(args) -> int:
    from core.monitor.check import MonitorConfig, check_model
    from core.workspace import Workspace

    root = args.workspace or Workspace.from_env().root
    config = MonitorConfig(min_labels=args.min_labels, latency_budget_ms=args.latency_budget_ms,
                           n_windows=args.windows)
    report = check_model(root, args.model, since=args.since, until=args.until, config=config)
    out: dict[str, Any] = report.to_dict()
    code = EXIT_ALERT if report.alerts else 0
    if not args.json:
        _print_report(report)
    if args.retrain_if_needed:
        out["retrain"], failed = _retrain_if_needed(root, args.model)
        code = 1 if failed else code
    if args.json:
        print(json.dumps(out))
    return code


def _print_report(report) -> None:
    lines = report.sentences()
    print(lines[0])
    for line in lines[1:]:
        print(f"  - {line}")
    print("\n| window start (UTC) | n | p50 ms | p99 ms | mean conf | low conf | class TVD | labelled | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in report.windows:
        if not w.n:
            continue
        acc = f"{100 * w.accuracy:.0f}% ({100 * w.accuracy_ci[0]:.0f}-{100 * w.accuracy_ci[1]:.0f})" \
            if w.accuracy is not None else "-"
        tvd = f"{w.class_tvd:.2f}" if w.class_tvd is not None else "-"
        print(f"| {w.to_dict()['start_iso'][:16]} | {w.n} | {w.latency_p50_ms:.1f} | {w.latency_p99_ms:.1f} | "
              f"{w.mean_confidence:.2f} | {100 * w.low_confidence_share:.0f}% | {tvd} | {w.n_labelled} | {acc} |")
    if report.alerts:
        print(f"\n{len(report.alerts)} open alert(s):")
        for a in report.alerts:
            print(f"  [{a.kind}] {a.reason}")
    else:
        print("\nno open alert")


def _retrain_if_needed(root: str, model: str) -> tuple[dict[str, Any], bool]:
    """(what happened, whether a retrain failed). Imported here: a plain check never loads the training code."""
    from core.monitor import retrain as retraining

    try:
        trigger = retraining.trigger_state(root, model)
    except USER_ERRORS as exc:  # e.g. the champion's run is not in this workspace: the report still stands
        print(f"error: cannot decide on a retrain: {exc}", file=sys.stderr)
        return {"status": "failed", "error": str(exc)}, True
    if not trigger.should_retrain:
        print(f"no retrain: {trigger.sentence()}", file=sys.stderr)
        return {"status": "not needed", "reasons": list(trigger.reasons)}, False
    print(f"retraining {model}: {trigger.sentence()}", file=sys.stderr)
    try:
        result = retraining.retrain(root, model, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except USER_ERRORS as exc:  # refused or failed: the check's report is still printed, exit 1; a bug keeps its trace
        print(f"error: the retrain failed: {exc}", file=sys.stderr)
        return {"status": "failed", "error": str(exc), "reasons": list(trigger.reasons)}, True
    print(f"challenger registered: {model} version {result.version} (run {result.run_id})", file=sys.stderr)
    return {"status": "retrained", "reasons": list(trigger.reasons), **result.to_dict()}, False
