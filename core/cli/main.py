"""`python -m core ...`: the engine from the command line.

Progress goes to stderr; the last stdout line of `train` (and of every `--json` command) is one JSON
object, so scripts and tests can read `tail -n 1`. Exit codes: 0 success, 1 the run failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys

from core.cli.args import USER_ERRORS, user_error
from core.config import ConfigError, TrainConfig

DEFAULT_RUNS_DIR = "runs"


DELEGATED = {  # command -> (module with its own main(argv), help line)
    "audit": ("core.cli.audit", "audit a dataset: python -m core audit DATA [--json]"),
    "bakeoff": ("core.cli.bakeoff", "rank candidate backbones: python -m core bakeoff DATA --models a,b,c"),
    "evaluate": ("core.cli.evaluate", "evaluate a run: python -m core evaluate RUN_ID [--runs-dir DIR]"),
    "registry": ("core.cli.registry", "model registry: python -m core registry list|register|alias|rollback|show"),
    "export": ("core.cli.export", "export a run as a checked bundle: python -m core export RUN_ID [--format onnx|pt2]"),
    "serve": ("core.cli.serve", "serve a registry model over HTTP: python -m core serve MODEL[@ALIAS|:VERSION]"),
    "monitor": ("core.cli.monitor", "monitor a served model: python -m core monitor MODEL [--since 7d] "
                "[--retrain-if-needed]"),
    "retrain": ("core.cli.retrain", "retrain a model on old + new data: python -m core retrain MODEL"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description="Transfer Studio engine")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a pretrained backbone on a folder of images")
    train.add_argument("data", nargs="?", help="folder of class subfolders (or with train/ val/ test/), .zip or "
                       ".tar.gz of one, CSV of path,label, a split manifest, a stored dataset id, or 'demo'")
    train.add_argument("--config", help="JSON file of TrainConfig fields")
    train.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    train.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    train.add_argument("--workspace", help="where datasets are stored (default: the runs directory)")
    train.add_argument("--resume", metavar="RUN_ID", help="resume a stopped or killed run from its last checkpoint")

    models = sub.add_parser("models", help="list the backbone catalog")
    models.add_argument("--json", action="store_true")
    models.add_argument("--check-hub", action="store_true", help="probe the network for hub models")

    runs = sub.add_parser("runs", help="list the runs in a runs directory")
    runs.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    runs.add_argument("--json", action="store_true")

    for name, summary in DELEGATED.items():  # listed in --help; each parses its own arguments
        sub.add_parser(name, add_help=False, help=summary[1]).add_argument("rest", nargs=argparse.REMAINDER)

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return {"train": _train, "models": _models, "runs": _runs}[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from core.runs.launch import resume_run, start_run
    from core.train.failures import TrainingFailed
    from core.train.trackers import ConsoleProgress

    try:
        if args.resume:
            summary = resume_run(args.resume, args.runs_dir, [ConsoleProgress()])
        else:
            if not args.data:
                print("error: give a DATA folder, or --resume RUN_ID", file=sys.stderr)
                return 2
            config = TrainConfig()
            if args.config:
                with open(args.config) as f:
                    config = TrainConfig.from_dict(json.load(f))
            config = config.with_overrides(args.set).validate()
            summary = start_run(config, args.data, args.runs_dir, [ConsoleProgress()], workspace_dir=args.workspace)
    except TrainingFailed as exc:  # the run started and failed: exit 1
        print(json.dumps({"status": "failed", "error": str(exc)}))
        return 1
    except USER_ERRORS as exc:
        return user_error(exc, json_line=False)
    print(json.dumps(summary))
    return 0


def _models(args) -> int:
    from core.model.catalog import list_catalog

    rows = list_catalog(check_hub=args.check_hub)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':46} {'source':12} {'params':>7} {'input':>5} {'top1':>5}  available")
    for r in rows:
        top1 = f"{r['imagenet_top1']:.1f}" if r["imagenet_top1"] else "-"
        print(f"{r['name']:46} {r['source']:12} {r['params_m']:6.1f}M {r['input_size']:5} {top1:>5}  "
              f"{'yes' if r['available'] else 'no'} ({r['availability']})")
    return 0


def _runs(args) -> int:
    from core.runs.store import RunStore

    store = RunStore(args.runs_dir)
    runs = [{**r, "status": store.live_status(r)} for r in store.list_runs()]  # a dead trainer: interrupted
    if args.json:
        print(json.dumps([{k: r[k] for k in ("id", "status", "model", "data_source", "summary", "error", "owner")}
                          for r in runs]))
        return 0
    for r in runs:
        acc = r["summary"].get("metrics", {}).get("val_accuracy")
        print(f"{r['id']}  {r['status']:13} {r['model']:24} val_acc={acc if acc is None else round(acc, 4)}")
    return 0
