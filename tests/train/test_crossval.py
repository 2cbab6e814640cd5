"""core.train.crossval: the K-fold second opinion a small, undecided validation split gets; folds keep groups whole."""
from __future__ import annotations

import numpy as np

from core.train.crossval import crossval_check, fold_of
from core.train.events import Note
from core.runs.launch import load_data, start_run


def test_folds_are_stratified_and_keep_groups_whole():
    labels = [0] * 30 + [1] * 12
    groups = [i // 3 for i in range(42)]  # trios of related images
    fold = fold_of([str(i) for i in range(42)], labels, groups, 3, seed=0)
    for g in set(groups):
        assert len({fold[i] for i in range(42) if groups[i] == g}) == 1
    for y in (0, 1):
        counts = np.bincount(fold[np.asarray(labels) == y], minlength=3)
        assert counts.max() - counts.min() <= 3  # one trio of imbalance at most


def test_the_check_predicts_every_pool_image_once_and_cleans_up(tmp_path, small_digits_dir, tiny_config):
    config = tiny_config.replace(epochs=1)
    data = load_data(small_digits_dir, config, str(tmp_path / "ws"))
    check = crossval_check(config, data, 1, str(tmp_path / "cv"), hash, folds=2)
    assert check.comparison.n == len(data.train) + len(data.val) and check.folds == 2 and check.epochs == 1
    assert 0 <= check.comparison.probe <= 1 and 0 <= check.comparison.model <= 1
    assert "2-fold check on the" in check.describe()
    assert not (tmp_path / "cv").exists()


def test_an_undecided_small_validation_split_gets_a_cross_validated_check(tmp_path, small_digits_dir, tiny_config,
                                                                          monkeypatch):
    import core.train.outcome
    import core.train.ending

    def undecided(split, *args, **kwargs):  # validation that cannot tell the two apart
        c = core.train.outcome.compare(split, *args, **kwargs)
        return core.train.outcome.Comparison(c.split, c.n, c.model, c.probe, 0.0, (-0.1, 0.1))

    monkeypatch.setattr(core.train.ending, "compare", undecided)
    notes: list[str] = []
    summary = start_run(tiny_config.replace(crossval_folds=2), small_digits_dir, str(tmp_path),
                        [lambda e: notes.append(e.message) if isinstance(e, Note) else None])
    assert any("2-fold check on train+val decides" in n for n in notes)
    assert any("fold 2 of 2" in n for n in notes)
    assert "2-fold check on the" in summary["outcome"]["decided_by"]
    assert not (tmp_path / summary["run_id"] / "crossval").exists()  # the folds' files are cleaned up


def test_a_large_or_decided_validation_split_is_not_checked_again(tmp_path, small_digits_dir, tiny_config):
    notes: list[str] = []
    start_run(tiny_config.replace(crossval_folds=0), small_digits_dir, str(tmp_path),
              [lambda e: notes.append(e.message) if isinstance(e, Note) else None])
    assert not notes
