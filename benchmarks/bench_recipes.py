"""Fine-tuning recipes against the frozen linear probe, on several small datasets of different domains.

    python benchmarks/devsets.py /tmp/dev                      # build the datasets (see its docstring)
    python benchmarks/bench_recipes.py --data /tmp/dev --recipes default,lpft --seeds 0,1,2 --out r.jsonl
    python benchmarks/bench_recipes.py --table r.jsonl         # the table of a results file

Every (dataset, seed) is split once by the product itself (`core.runs.launch.prepare_data`, stratified 70/15/15,
the seed as the split seed, related images kept together: a font family through a CSV `group` column,
anything else as the product finds it, `group_by`); every recipe then trains on that same split
with that seed, through the engine (`core.runs.launch.execute_run`). The probe's test accuracy is the run's own
baseline (frozen trunk + logistic regression, fitted on the same training images). One JSON line per run.

The table gives, per dataset and recipe, the mean test accuracy over seeds, the mean paired difference
from the probe with a 95% interval (a t interval over the seeds' differences), and how many seeds the
recipe was at least as good as the probe.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import TrainConfig  # noqa: E402
from core.data.split_data import from_manifest  # noqa: E402
from core.train.events import Dispatcher  # noqa: E402
from core.train.outcome import FINE_TUNED, choose  # noqa: E402
from core.runs.launch import create_run, prepare_data, second_opinion  # noqa: E402
from core.runs.store import RunStore  # noqa: E402
from core.runs.recorder import StoreTracker  # noqa: E402
from core.train.loop import Trainer  # noqa: E402
from core.train.scores import better, monitor_score  # noqa: E402


class RecordingTrainer(Trainer):
    """The engine's trainer, also recording every epoch's val and test predictions (epoch 0: the probe), so
    that selection rules can be compared afterwards on the same runs without training again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record: list[dict] = []

    def kept_test_pred(self) -> list[int]:
        """The kept model's test predictions (it is loaded when the run has finished)."""
        return [int(v) for v in self._predict(self.test_src, self.model)[1]]

    def _close_epoch(self, state, metrics, started, count=True):
        _, test_pred, _ = self._predict(self.test_src)
        self.record.append({"epoch": state.epoch + (1 if count else 0), "val_pred": [int(v) for v in self.val_pred],
                            "test_pred": [int(v) for v in test_pred],
                            "score": monitor_score(metrics, self.config.monitor)})
        super()._close_epoch(state, metrics, started, count)

# each recipe: TrainConfig overrides on top of the defaults (and of --set)
LPFT = ['head_init="linear_probe"', 'bn_stats="frozen"', "trunk_lr_ratio=0.1", "label_smoothing=0"]
RECIPES: dict[str, list[str]] = {
    "default": [],
    "lr1e-3": ["lr=1e-3"],
    "no_crossval": ["crossval_folds=0"],
    "lpft_bn_frozen": LPFT,
    "lpft": LPFT + ['bn_stats="trainable"'],
    "head_warmup": ["head_warmup_epochs=0.5"],
    "ema": ["ema_epochs=1"],
    "mixup": ["mixup=0.2"],
    "l2sp": ["l2sp=0.01"],
    "tta": ["tta=true"],
}
# what a user who knows the data would set: digits and letters have a handedness, so no mirror images
DATASET_SETTINGS: dict[str, list[str]] = {"digits": ["augment.hflip=false"], "glyphs": ["augment.hflip=false"]}


def group_column(dataset: str, rel: str) -> str:
    """Related images the product cannot know of: one font family's files (glyphs) share only the first
    letters of their names. Stamps' views (`<stamp>_v1.png`) are left for the product to find itself."""
    name = Path(rel).stem
    if dataset == "glyphs":
        import re

        return re.sub(r"[^a-z0-9]", "", name.lower())[:5]
    return ""


def dataset_csv(data_root: str, dataset: str) -> str:
    """`DATA/<dataset>.csv` of `path,label,group` for a class-folder dataset: the split keeps groups together."""
    root = Path(data_root, dataset)
    path = Path(data_root, f"{dataset}.csv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group"])
        for label in sorted(os.listdir(root)):
            for f in sorted(os.listdir(root / label)):
                w.writerow([f"{dataset}/{label}/{f}", label, group_column(dataset, f"{label}/{f}")])
    return str(path)


def quick_image_size(source: str, work: str) -> int:
    """The image size the Configure page suggests on a CPU for this data (core.plan.suggest)."""
    from core.data.audit import audit_dataset
    from core.plan.suggest import suggest_settings

    report = audit_dataset(source, workspace_dir=os.path.join(work, "ws"))
    return suggest_settings(report, "cpu", 224).changes.get("image_size", 224)


def parse_recipe(spec: str) -> tuple[str, list[str]]:
    """`name` from RECIPES, or `name:key=value;key=value` for an ad-hoc one."""
    if ":" in spec:
        name, pairs = spec.split(":", 1)
        return name, [p for p in pairs.split(";") if p]
    return spec, RECIPES[spec]


def run_all(args) -> None:
    work = tempfile.mkdtemp(prefix="recipes-")
    store = RunStore(os.path.join(work, "runs"))
    base = TrainConfig(epochs=args.epochs).with_overrides(args.set)
    recipes = [parse_recipe(r) for r in args.recipes.split(",")] if args.recipes else list(RECIPES.items())
    out = open(args.out, "a") if args.out else None
    for dataset in args.datasets.split(","):
        source = dataset_csv(args.data, dataset)
        size = args.image_size or quick_image_size(source, work)
        for seed in [int(s) for s in args.seeds.split(",")]:
            splits: dict[str, tuple] = {}  # group_by -> (manifest, data): a recipe may split differently
            for name, overrides in recipes:
                config = base.with_overrides(DATASET_SETTINGS.get(dataset, []) + overrides)
                config = config.replace(seed=seed, image_size=size).validate()
                if config.group_by not in splits:
                    manifest = prepare_data(source, config, os.path.join(work, "ws"))
                    splits[config.group_by] = (manifest, from_manifest(manifest, source))
                manifest, data = splits[config.group_by]
                run_id = create_run(store, config, data, manifest)
                started = time.time()
                trainer = RecordingTrainer(run_id, config, data, store.run_dir(run_id), Dispatcher([StoreTracker(store)]),
                                           second_opinion=second_opinion(store.run_dir(run_id), config, data))
                summary = trainer.run()
                row = {"dataset": dataset, "seed": seed, "recipe": name, "overrides": overrides,
                       "image_size": size, "epochs": args.epochs, "set": args.set,
                       "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
                       "probe_val": summary["baseline"].get("val_accuracy"),
                       "probe_test": summary["baseline"].get("test_accuracy"),
                       "val": summary["metrics"].get("val_accuracy"), "test": summary["metrics"].get("test_accuracy"),
                       "test_f1": summary["metrics"].get("test_macro_f1"),
                       "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
                       "wise_ft_alpha": summary.get("wise_ft_alpha"), "seconds": round(time.time() - started, 1),
                       "kept": summary["outcome"]["kept"], "y_val": list(data.val.labels),
                       "y_test": list(data.test.labels), "epochs_record": trainer.record,
                       "num_classes": len(data.classes), "decided_by": summary["outcome"]["decided_by"],
                       "test_pred": trainer.kept_test_pred(),
                       "grouped_images": sum(g.get("images", 0) for g in manifest.grouping)}
                print(json.dumps({k: v for k, v in row.items() if k not in ("y_val", "y_test", "epochs_record")}),
                      flush=True)
                if out:
                    out.write(json.dumps(row) + "\n")
                    out.flush()


def table(path: str, rule: str = "recorded") -> str:
    """Per dataset and recipe: test accuracy of the probe and of the kept model (mean over seeds), the
    difference with a 95% interval (bootstrap over every seed's test images, paired), seeds at least level.
    `rule`: "recorded" (what the product kept, cross-validated check included) or a selection rule (RULES)."""
    import numpy as np

    from core.stats import bootstrap_mean_interval

    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["dataset"], r["recipe"])].append(r)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    lines = ["| dataset | recipe | seeds | train/val/test | probe test | kept model test | difference, points (95% CI) "
             "| seeds >= probe |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    overall = defaultdict(list)
    for d in datasets:
        for rc in recipes:
            rs = by.get((d, rc))
            if not rs:
                continue
            deltas, probe_acc, kept_acc, level = [], [], [], 0
            for r in rs:
                probe = np.asarray(r["epochs_record"][0]["test_pred"]) == np.asarray(r["y_test"])
                kept_pred = r.get("test_pred") if rule == "recorded" else select(r, rule)["test_pred"]
                if kept_pred is None:  # older result files: the recorded kept model's accuracy only
                    kept_pred = select(r, "point")["test_pred"]
                kept = np.asarray(kept_pred) == np.asarray(r["y_test"])
                deltas.append(kept.astype(float) - probe)
                probe_acc.append(probe.mean())
                kept_acc.append(kept.mean())
                level += kept.mean() >= probe.mean() - 1e-9
            pooled = np.concatenate(deltas)
            lo, hi = bootstrap_mean_interval(pooled)
            mean = float(np.mean([x.mean() for x in deltas]))
            overall[rc].append(mean)
            r0 = rs[0]
            lines.append(f"| {d} | {rc} | {len(rs)} | {r0['n_train']}/{r0['n_val']}/{r0['n_test']} | "
                         f"{np.mean(probe_acc):.3f} | {np.mean(kept_acc):.3f} | {mean * 100:+.1f} "
                         f"({lo * 100:+.1f} to {hi * 100:+.1f}) | {level}/{len(rs)} |")
    lines += ["", "| recipe | datasets | mean difference from the probe (points) | worst dataset |",
              "| --- | --- | --- | --- |"]
    for rc, means in overall.items():
        lines.append(f"| {rc} | {len(means)} | {sum(means) / len(means) * 100:+.1f} | {min(means) * 100:+.1f} |")
    return "\n".join(lines)


def _accuracy(pred, truth) -> float:
    return sum(int(p == t) for p, t in zip(pred, truth)) / max(1, len(truth))


def select(row: dict, rule: str) -> dict:
    """The epoch record a selection rule keeps for one run (epoch 0: the probe)."""
    records = row["epochs_record"]
    probe, tuned = records[0], records[1:]
    if not tuned:
        return probe
    best = tuned[0]
    for r in tuned[1:]:
        if better(r["score"], best["score"]):
            best = r
    if rule == "best_tuned":  # the best fine-tuning epoch, never the probe
        return best
    if rule == "last":
        return tuned[-1]
    if rule == "point":  # the best of all epochs including the probe (the product before the decision rule)
        return best if better(best["score"], probe["score"]) else probe
    if rule == "point_ties_tuned":  # as "point", but a tie goes to the fine-tuned model
        return probe if better(probe["score"], best["score"]) else best
    if rule == "unless_clearly_worse":  # keep the fine-tuned model unless the paired interval lies below 0
        from core.train.outcome import compare

        c = compare("val", row["y_val"], best["val_pred"], probe["val_pred"])
        return probe if c.interval[1] < 0 else best
    if rule.startswith("shrink"):  # the val difference shrunk toward a prior mean: shrink:<mean>:<sd> in points
        from core.train.outcome import compare

        _, mean, sd = rule.split(":")
        c = compare("val", row["y_val"], best["val_pred"], probe["val_pred"])
        se = max(1e-6, (c.interval[1] - c.interval[0]) / 3.92)
        w = (float(sd) / 100) ** 2 / ((float(sd) / 100) ** 2 + se ** 2)
        return best if w * c.difference + (1 - w) * float(mean) / 100 >= 0 else probe
    if rule == "product":  # core.train.outcome.choose
        kept, _ = choose(row["y_val"], probe["val_pred"], best["val_pred"], better(best["score"], probe["score"]),
                         row["num_classes"])
        return best if kept == FINE_TUNED else probe
    raise ValueError(rule)


RULES = ("product", "point", "point_ties_tuned", "unless_clearly_worse", "shrink:2:4", "best_tuned", "last")


def rules_table(path: str) -> str:
    """Test accuracy minus the probe's, per recipe and selection rule, averaged over seeds then datasets."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rows = [r for r in rows if "epochs_record" in r]
    lines = ["| recipe | rule | " + " | ".join(dict.fromkeys(r["dataset"] for r in rows)) + " | mean | worst |",
             "| --- | --- |" + " --- |" * (len(set(r["dataset"] for r in rows)) + 2)]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for rule in RULES:
            means = []
            for d in datasets:
                rs = [r for r in rows if r["recipe"] == recipe and r["dataset"] == d]
                diffs = [_accuracy(select(r, rule)["test_pred"], r["y_test"]) -
                         _accuracy(r["epochs_record"][0]["test_pred"], r["y_test"]) for r in rs]
                means.append(sum(diffs) / len(diffs) if diffs else float("nan"))
            cells = " | ".join(f"{m * 100:+.1f}" for m in means)
            lines.append(f"| {recipe} | {rule} | {cells} | {sum(means) / len(means) * 100:+.1f} | "
                         f"{min(means) * 100:+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/dev", help="the folder benchmarks/devsets.py wrote")
    parser.add_argument("--datasets", default="digits,faces,glyphs,emoji,textures,parts")
    parser.add_argument("--recipes", help="comma-separated names, or name:key=value;key=value (default: all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--image-size", type=int, default=0, help="0: the size the Configure page suggests on a CPU")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides for every recipe")
    parser.add_argument("--out", help="append the JSON lines to this file")
    parser.add_argument("--table", help="print the table of a results file and exit")
    parser.add_argument("--rules", help="print the selection-rule table of a results file and exit")
    parser.add_argument("--rule", default="recorded", help="with --table: the selection rule (default: what the "
                        "product kept)")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table, args.rule))
        return 0
    if args.rules:
        print(rules_table(args.rules))
        return 0
    run_all(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
