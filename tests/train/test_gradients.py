"""core.train.gradients: per-group gradient norm and update/weight ratio; zero where frozen, and read into advice."""
from __future__ import annotations

from core.train.events import GradientStats
from core.train.gradients import adaptation_summary, mean_rates
from core.runs.launch import start_run


def test_frozen_groups_have_no_gradient_and_trained_ones_move(tmp_path, small_digits_dir, tiny_config):
    seen: list[GradientStats] = []
    summary = start_run(tiny_config.replace(freeze_ratio=0.75, group_by="names"), small_digits_dir,
                        str(tmp_path / "runs"), [lambda e: seen.append(e) if isinstance(e, GradientStats) else None])
    assert len(seen) >= 4  # about four per epoch, two epochs
    frozen = summary["frozen_groups"]
    assert 0 < frozen < summary["layer_groups"]
    for event in seen:
        for i in range(summary["layer_groups"]):
            norm, ratio = event.stats[f"grad_norm/group{i}"], event.stats[f"update_ratio/group{i}"]
            if i < frozen:
                assert norm == 0.0 and ratio == 0.0
            else:
                assert norm > 0.0 and ratio > 0.0
        assert event.stats["grad_norm/head"] > 0 and event.stats["update_ratio/head"] > 0
    assert summary["adaptation"].startswith("The adaptation is carried by")


def _rows(rates: dict[str, float], n: int = 8) -> list[dict]:
    return [{"step": s, "epoch": 0, **{f"update_ratio/{g}": r for g, r in rates.items()},
             **{f"grad_norm/{g}": 1.0 for g in rates}} for s in range(n)]


def test_still_lower_groups_suggest_freezing_them():
    rates = {"group0": 0.0, "group1": 0.0, "group2": 1e-7, "group3": 2e-4, "head": 3e-3}
    advice = adaptation_summary(_rows(rates), frozen_groups=2, num_groups=4, freeze_ratio=0.5)
    assert advice["carry"] == ["head"] or "group3" in advice["carry"]
    assert advice["freeze_ratio"] == 0.75 and "group2" in advice["sentence"]


def test_a_busy_lowest_group_suggests_unfreezing_further():
    rates = {"group0": 0.0, "group1": 0.0, "group2": 8e-4, "group3": 9e-4, "head": 1e-3}
    advice = adaptation_summary(_rows(rates), frozen_groups=2, num_groups=4, freeze_ratio=0.5)
    assert advice.get("unfreeze") and "unfreezing" in advice["sentence"]
    assert "freeze_ratio" not in advice


def test_a_rewritten_group_says_the_learning_rate_is_high():
    rates = {"group0": 0.0, "group1": 0.05, "head": 0.08}
    advice = adaptation_summary(_rows(rates), frozen_groups=1, num_groups=2, freeze_ratio=0.5)
    assert advice["lower_lr"] == ["group1", "head"] and "learning rate is high" in advice["sentence"]


def test_recent_points_weigh_in_and_no_rows_say_nothing():
    rows = _rows({"head": 1.0}, 4) + _rows({"head": 3.0}, 4)
    assert mean_rates(rows)["head"] == 3.0
    assert adaptation_summary([], 0, 3, 0.0)["sentence"] == ""
