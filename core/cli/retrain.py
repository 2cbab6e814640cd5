"""`python -m core retrain MODEL ...`: retrain a served model on its champion's data plus new labelled data, then
compare the challenger with the champion and promote it only with evidence (core.monitor.retrain, .challenger).

    python -m core retrain MODEL [--workspace W] [--data FOLDER_OR_ZIP] [--min-labels N] [--force]
                                 [--set KEY=VALUE ...] [--json]
        retrain when the trigger says so (an open accuracy or drift alert AND at least N new labelled images:
        feedback with logged images, plus --data, a folder of class subfolders or a zip); --force skips the
        trigger. The result is registered as MODEL@challenger; the champion does not move.
    python -m core retrain MODEL --check [--min-labels N]        the trigger only: would it retrain, and why
    python -m core retrain MODEL --compare [--online] [--margin M] [--confidence C]
        champion vs challenger: offline on the challenger run's test images (old and new apart), or --online
        from the prediction log (shadow pairs, A/B arms); prints the decision sentence
    python -m core retrain MODEL --promote [--online] [--margin M] [--confidence C] [--force] [--actor NAME]
        compare, decide, and move MODEL@champion to the challenger when it is not worse (refused otherwise,
        unless --force); the decision sentence is the alias move's reason in the registry history
    python -m core retrain MODEL --rollback                      undo the champion alias's last move

The monthly check as a cron line (the monitor command retrains only when the trigger says so):

    0 3 1 * * cd /srv/studio && python -m core monitor MODEL --retrain-if-needed

Progress goes to stderr; with --json the last stdout line is one JSON object. Exit codes: 0 done (a comparison
that says "keep the champion" included), 1 the run or its export failed, 2 bad input or refused (trigger says
no, too few labels, promotion not supported by the evidence).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from core.cli.args import USER_ERRORS, ArgParser, UsageError, user_error
from core.files import jsonable


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m core retrain", description="Retrain a served model on old + new labelled data, "
                  "compare the challenger with the champion, promote it with evidence.")
    p.add_argument("model", help="registry model name")
    p.add_argument("--workspace", help="the workspace folder (default: $TRANSFER_STUDIO_WORKSPACE or ./workspace)")
    p.add_argument("--data", help="a labelled batch to add: a folder of class subfolders or a .zip of one")
    p.add_argument("--min-labels", type=int, default=500, help="new labelled images needed to retrain (default 500)")
    p.add_argument("--accuracy-drop", type=float, default=0.05,
                   help="an accuracy alert counts this far below the validation baseline (default 0.05)")
    p.add_argument("--no-drift", action="store_true", help="an open drift alert alone does not trigger a retrain")
    p.add_argument("--force", action="store_true", help="retrain (or promote) even when the rules say no")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override the champion run's config")
    p.add_argument("--json", action="store_true", help="the result as one JSON line on stdout")
    action = p.add_mutually_exclusive_group()
    for flag, text in (("--check", "only say whether the trigger calls for a retrain"),
                       ("--compare", "compare the challenger with the champion"),
                       ("--promote", "compare, and move the champion to the challenger when it is not worse"),
                       ("--rollback", "undo the champion alias's last move")):
        action.add_argument(flag, action="store_true", help=text)
    p.add_argument("--online", action="store_true", help="compare on the prediction log instead of test images")
    p.add_argument("--margin", type=float, default=0.0, help="accepted accuracy loss, as a fraction (default 0)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the decision (default 0.95)")
    p.add_argument("--actor", default="", help="who promotes or rolls back (default: the OS user)")
    return p


def _say(args, payload: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(jsonable(payload)))
    else:
        print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        return user_error(exc)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    from core.monitor import challenger, retrain
    from core.train.failures import TrainingFailed
    from core.workspace import Workspace

    root = os.path.abspath(args.workspace) if args.workspace else Workspace.from_env().root
    err = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        rules = retrain.TriggerRules(args.min_labels, args.accuracy_drop, not args.no_drift)
        if args.check:
            t = retrain.trigger_state(root, args.model, rules)
            _say(args, {"status": "ok", "should_retrain": t.should_retrain, "reasons": list(t.reasons),
                        "labels_collected": t.labels_collected, "labels_needed": t.labels_needed}, list(t.reasons))
            return 0
        if args.rollback:
            move = challenger.rollback(root, args.model, actor=args.actor)
            _say(args, {"status": "ok", **move}, [f"{args.model}@champion: {move['from_version']} -> "
                                                 f"{move['to_version']} ({move['reason']})"])
            return 0
        if args.compare or args.promote:
            comparison = (challenger.compare_online(root, args.model) if args.online
                          else challenger.compare_offline(root, args.model))
            decision = challenger.decide(comparison, args.margin, args.confidence)
            payload = {"status": "ok", "comparison": comparison.to_dict(), "promote": decision.promote,
                       "decision": decision.sentence}
            lines = [decision.sentence]
            if args.promote:
                move = challenger.promote(root, args.model, decision, actor=args.actor, force=args.force)
                payload["move"] = move
                lines.append(f"{args.model}@champion -> {move['to_version']}")
            _say(args, payload, lines)
            return 0
        from core.train.trackers import ConsoleProgress

        result = retrain.retrain(root, args.model, extra=args.data, rules=rules, force=args.force,
                                 config_overrides=args.set, progress=err, listeners=[ConsoleProgress()])
    except (TrainingFailed, retrain.RetrainFailed) as exc:  # the run started and failed: exit 1
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"status": "failed", "error": str(exc)}))
        return 1
    except USER_ERRORS as exc:
        return user_error(exc, json_line=args.json)
    _say(args, {"status": "ok", **result.to_dict()},
         [f"{args.model}:{result.version} is the challenger (run {result.run_id}, dataset {result.dataset_id})",
          *result.focus, f"next: python -m core retrain {args.model} --compare"])
    return 0
