import numpy as np
import pytest
import torch

from core.model.backbones import load_backbone
from core.evaluate.baselines import LinearClassifier, heuristic, linear_probe, majority_class, train_from_scratch
from core.config import AugmentSpec, TrainConfig
from core.model.cache import build_cache
from core.runs.launch import load_data


def test_majority_baseline_scores_the_largest_class_share():
    y_train = [0] * 5 + [1] * 12 + [2] * 3
    y_test = np.array([0] * 4 + [1] * 9 + [2] * 2)
    probs = majority_class(y_train, 3, len(y_test))
    assert probs[0].tolist() == pytest.approx([5 / 20, 12 / 20, 3 / 20])
    accuracy = float((probs.argmax(1) == y_test).mean())
    assert accuracy == pytest.approx(np.bincount(y_test).max() / len(y_test))


def test_linear_classifier_gives_probabilities_for_every_class_even_unseen_ones():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (20, 4)), rng.normal(3, 1, (20, 4))])
    y = np.array([0] * 20 + [2] * 20)  # class 1 never seen in training
    probs = LinearClassifier(3).fit(x, y).predict_proba(x)
    assert probs.shape == (40, 3) and np.allclose(probs.sum(1), 1) and (probs[:, 1] == 0).all()
    assert (probs.argmax(1) == y).mean() > 0.9


@pytest.fixture(scope="module")
def digits_caches(small_digits_dir, tmp_path_factory):
    data = load_data(small_digits_dir, TrainConfig(), str(tmp_path_factory.mktemp("ws")))
    backbone = load_backbone("efficientnet_lite0")
    pre = backbone.preprocess.with_input_size(32)
    cpu = torch.device("cpu")
    caches = {s: build_cache(getattr(data, s).paths, pre, cpu) for s in ("train", "val", "test")}
    labels = {s: np.asarray(getattr(data, s).labels) for s in ("train", "val", "test")}
    return backbone, pre, caches, labels


def test_heuristic_and_linear_probe_baselines_learn_digits(digits_caches):
    backbone, pre, caches, labels = digits_caches
    chance = 0.1
    hog = heuristic(caches["train"], labels["train"], caches["test"], 10)
    assert hog.shape == (len(labels["test"]), 10)
    assert (hog.argmax(1) == labels["test"]).mean() > chance + 0.4
    probe = linear_probe(backbone.trunk, pre, caches["train"], labels["train"], caches["test"], 10, torch.device("cpu"))
    assert (probe.argmax(1) == labels["test"]).mean() > chance + 0.4


def test_from_scratch_trains_the_architecture_with_the_runs_budget(digits_caches):
    _, pre, caches, labels = digits_caches
    config = TrainConfig(image_size=32, epochs=2, batch_size=32, augment=AugmentSpec(hflip=False),
                         early_stopping_patience=0)
    model, info = train_from_scratch(config, 10, pre, caches["train"], labels["train"], caches["val"],
                                     labels["val"], torch.device("cpu"))
    assert info["epochs_run"] == 2 and 1 <= info["best_epoch"] <= 2
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen: there is nothing pretrained
    from core.evaluate.evaluation import predict_images

    probs = predict_images(model, pre, caches["test"])
    assert probs.shape == (len(labels["test"]), 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
