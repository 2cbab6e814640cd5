import dataclasses
import json

import pytest

from core.train.advisor import TINY_PER_CLASS, Advice, advise_curves, advise_run, advise_setup, format_advice
from core.data.audit import IMBALANCE_WARN_RATIO, audit_dataset
from core.config import TrainConfig
from core.plan.suggest import suggest_settings

CONFIG = TrainConfig(lr=1e-3).to_dict()  # round numbers in the advice below


def curve(val_loss, train_loss=None, f1=None, probe_f1=0.80, probe_loss=0.60, train_acc=0.7):
    """Epoch rows as a JobSnapshot holds them: row 0 the probe (val_* only), then fine-tuning epochs."""
    n = len(val_loss)
    train_loss = train_loss or [1.0 - 0.08 * i for i in range(n)]
    f1 = f1 or [probe_f1 + 0.01 * (i + 1) for i in range(n)]
    rows = [{"epoch": 0, "val_loss": probe_loss, "val_accuracy": probe_f1, "val_macro_f1": probe_f1, "stage": 0}]
    for i in range(n):
        rows.append({"epoch": i + 1, "train_loss": train_loss[i], "train_accuracy": train_acc,
                     "val_loss": val_loss[i], "val_accuracy": f1[i], "val_macro_f1": f1[i], "stage": 0,
                     "lr_head": 1e-3})
    return rows


HEALTHY = curve([0.90, 0.75, 0.64, 0.56, 0.50, 0.46, 0.43], [1.00, 0.80, 0.66, 0.57, 0.50, 0.45, 0.41])


def codes(advice):
    return [a.code for a in advice]


def test_a_healthy_curve_gets_no_advice():
    assert advise_curves(HEALTHY, CONFIG, finished=True) == ()
    assert advise_curves(HEALTHY[:2], CONFIG, finished=False) == ()
    assert advise_curves([], CONFIG, finished=False) == ()


def test_overfitting_is_seen_with_its_evidence():
    rows = curve([0.60, 0.48, 0.41, 0.45, 0.51, 0.58], [0.90, 0.70, 0.52, 0.40, 0.30, 0.21])
    (advice,) = [a for a in advise_curves(rows, CONFIG, finished=True) if a.code == "overfitting"]
    assert advice.severity == "warning"
    assert "rose from 0.41 at epoch 3 to 0.58 at epoch 6" in advice.message
    assert "training loss fell from 0.52 to 0.21" in advice.message
    assert "freeze_ratio 0.75 -> 0.9" in advice.action and "lr 0.001 -> 0.00033" in advice.action
    assert "early_stopping_patience 4 -> 2" in advice.action
    assert advice.evidence["best_epoch"] == 3 and advice.evidence["epoch"] == 6


def test_overfitting_stays_quiet_on_one_rise_a_small_rise_or_a_rising_train_loss():
    one_rise = curve([0.60, 0.48, 0.41, 0.39, 0.50], [0.90, 0.70, 0.52, 0.40, 0.30])
    small = curve([0.60, 0.48, 0.41, 0.42, 0.43, 0.44], [0.90, 0.70, 0.52, 0.40, 0.30, 0.21])  # +7%
    both_rise = curve([0.60, 0.48, 0.41, 0.45, 0.51, 0.58], [0.90, 0.70, 0.52, 0.55, 0.60, 0.66])
    too_short = curve([0.41, 0.50])
    for rows in (one_rise, small, both_rise, too_short):
        assert "overfitting" not in codes(advise_curves(rows, CONFIG, finished=True))


def test_a_bouncing_val_loss_asks_for_half_the_learning_rate():
    rows = curve([0.90, 0.70, 0.85, 0.62, 0.80, 0.58, 0.75])
    (advice,) = [a for a in advise_curves(rows, CONFIG, finished=False) if a.code == "val_loss_bouncing"]
    assert "lr 0.001 -> 0.0005" in advice.action and advice.evidence["suggested"] == {"lr": 0.0005}
    assert advice.evidence["epochs"] == [2, 3, 4, 5, 6, 7]  # the last 6 only
    assert advice.evidence["sign_changes"] == 4
    wiggle = curve([0.60, 0.58, 0.59, 0.56, 0.57, 0.54, 0.55])  # sign changes, but ~2% steps
    assert "val_loss_bouncing" not in codes(advise_curves(wiggle, CONFIG, finished=False))
    short = curve([0.90, 0.70, 0.85, 0.62])  # only 2 sign changes possible
    assert "val_loss_bouncing" not in codes(advise_curves(short, CONFIG, finished=False))


def test_a_training_loss_flat_from_the_start_is_a_plateau_and_names_the_likely_lr_side():
    flat_val, flat_train = [1.5, 1.5, 1.49, 1.5], [2.0, 1.98, 1.97, 1.96]
    by_lr = {}
    for lr in (1e-2, 1e-6, 1e-3):
        rows = curve(flat_val, flat_train, train_acc=0.3)
        (advice,) = [a for a in advise_curves(rows, {**CONFIG, "lr": lr}, finished=False)
                     if a.code == "plateau_from_start"]
        by_lr[lr] = advice.action
    assert "too high (lr 0.01): try lr 0.0033" in by_lr[1e-2]
    assert "too low (lr 1e-06): try lr 3e-06" in by_lr[1e-6]
    assert "try lr 0.003 and lr 0.00033" in by_lr[1e-3] and "check the audit" in by_lr[1e-3]
    assert "plateau_from_start" not in codes(advise_curves(curve(flat_val[:2], flat_train[:2], train_acc=0.3),
                                                           CONFIG, finished=False))  # 2 epochs: too early
    learned = curve(flat_val, flat_train, train_acc=0.99)  # flat because it has already learned
    assert "plateau_from_start" not in codes(advise_curves(learned, CONFIG, finished=False))


def test_below_probe_on_macro_f1_and_its_severity_follows_finished():
    rows = curve([0.90, 0.75, 0.64, 0.56], f1=[0.70, 0.74, 0.78, 0.77], probe_f1=0.80)
    live = [a for a in advise_curves(rows, CONFIG, finished=False) if a.code == "below_probe"]
    done = [a for a in advise_curves(rows, CONFIG, finished=True) if a.code == "below_probe"]
    assert live[0].severity == "info" and live[0].message.startswith("so far")
    assert done[0].severity == "warning" and "probe is kept as the model" in done[0].action
    assert done[0].evidence == {"monitor": "val_macro_f1", "probe": 0.80, "best_epoch": 3, "best": 0.78}
    assert "below_probe" not in codes(advise_curves(HEALTHY, CONFIG, finished=True))  # 0.81.. beats 0.80


def test_below_probe_on_val_loss_means_lower_is_better():
    config = {**CONFIG, "monitor": "val_loss"}
    worse = curve([0.70, 0.66, 0.65, 0.68], probe_loss=0.60)  # f1 rises, but the monitor is the loss
    (advice,) = [a for a in advise_curves(worse, config, finished=True) if a.code == "below_probe"]
    assert advice.evidence["best_epoch"] == 3 and advice.evidence["best"] == 0.65
    better = curve([0.70, 0.55, 0.52, 0.53], probe_loss=0.60)
    assert "below_probe" not in codes(advise_curves(better, config, finished=True))


def test_setup_warns_about_a_tiny_dataset_fully_unfrozen():
    counts = {f"c{i}": 30 for i in range(10)}  # 300 images over 10 classes
    (advice,) = advise_setup({**CONFIG, "freeze_ratio": 0.0}, counts)
    assert advice.code == "tiny_data_unfrozen" and advice.severity == "warning"
    assert "300 images" in advice.message and "freeze_ratio 0.75" in advice.action
    assert advice.evidence["suggested"] == {"freeze_ratio": TrainConfig().freeze_ratio}
    assert advise_setup(CONFIG, counts) == ()  # the default 0.75
    big = {f"c{i}": TINY_PER_CLASS * 2 for i in range(10)}  # 2,000 images, 200 per class
    assert advise_setup({**CONFIG, "freeze_ratio": 0.0}, big) == ()


def test_setup_warns_about_imbalance_with_plain_cross_entropy_only():
    counts = {"common": int(50 * IMBALANCE_WARN_RATIO), "rare": 50}  # 10:1
    (advice,) = advise_setup(CONFIG, counts)
    assert advice.code == "class_imbalance" and "10:1" in advice.message and 'loss="focal"' in advice.action
    assert advise_setup({**CONFIG, "loss": "focal"}, counts) == ()
    assert advise_setup({**CONFIG, "loss": "weighted_cross_entropy"}, counts) == ()
    assert advise_setup(CONFIG, {"common": 490, "rare": 50}) == ()  # 9.8:1


@pytest.fixture(scope="module")
def report(small_digits_dir, tmp_path_factory):
    return audit_dataset(small_digits_dir, workspace_dir=str(tmp_path_factory.mktemp("ws")))


@pytest.mark.parametrize("base", [TrainConfig(), TrainConfig(freeze_ratio=0.0)])
@pytest.mark.parametrize("imbalanced", [False, True])
def test_setup_advice_never_contradicts_the_suggested_settings(report, base, imbalanced):
    if imbalanced:
        counts = {**report.class_counts, "0": 300}  # 300 vs 30: 10:1
        report = dataclasses.replace(report, class_counts=counts, imbalance_ratio=10.0)
    suggestion = suggest_settings(report, "cpu", 224)
    assert ("loss" in suggestion.changes) == imbalanced
    before = advise_setup(base.to_dict(), report.class_counts)
    if imbalanced:
        assert "class_imbalance" in codes(before)  # the check is not vacuous
    after = advise_setup(suggestion.apply(base).to_dict(), report.class_counts)
    for advice in after:
        touched = set(advice.evidence.get("suggested", {})) & set(suggestion.changes)
        assert not touched, f"{advice.code} argues with the suggested {touched}"
    assert "class_imbalance" not in codes(after)


def test_advise_run_puts_setup_first_and_formats_for_the_cli():
    counts = {"common": 500, "rare": 50}
    rows = curve([0.60, 0.48, 0.41, 0.45, 0.51, 0.58], [0.90, 0.70, 0.52, 0.40, 0.30, 0.21])
    advice = advise_run(rows, CONFIG, counts, finished=True)
    assert codes(advice) == ["class_imbalance", "overfitting"]
    assert len(set(codes(advice))) == len(advice)
    lines = format_advice(advice)
    assert lines[1].startswith("WARNING [overfitting] validation loss rose from 0.41") and ". The checkpoint" in lines[1]
    assert json.loads(json.dumps([a.to_dict() for a in advice]))[0]["code"] == "class_imbalance"
    assert isinstance(advice[0], Advice)
