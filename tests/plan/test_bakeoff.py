import json

import numpy as np
import pytest

from core.plan.bakeoff import (BakeoffError, BakeoffOptions, BakeoffResult, CandidateResult, recommend, result_rows,
    task_key, with_random_floor)
from core.cli.bakeoff import main
from core.data.splits import stratified_subset


def test_stratified_subset_keeps_class_shares_and_every_class():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    idx = stratified_subset(labels, 100, seed=0)
    assert np.bincount(labels[idx]).tolist() == [60, 30, 10]
    assert len(set(idx)) == len(idx) and (np.diff(idx) > 0).all()
    rare = np.array([0] * 990 + [1] * 10)
    assert 1 in rare[stratified_subset(rare, 50, seed=0)]
    assert len(stratified_subset(labels, None)) == len(labels) == len(stratified_subset(labels, 5000))


def _candidate(name, accuracy, interval, params, latency=10.0):
    return CandidateResult(name, name, True, "", params, 1280, 224, {"accuracy": accuracy}, {"accuracy": interval},
                           {"accuracy": accuracy}, {}, latency, latency / 4, 100.0, 50.0, 1.0, {})


def test_recommendation_prefers_the_smaller_model_unless_the_larger_is_clearly_better():
    big = _candidate("big", 0.90, (0.85, 0.95), 10_000_000)
    small = _candidate("small", 0.88, (0.83, 0.93), 4_000_000)
    name, reason = recommend([big, small])
    assert name == "small" and "smaller" in reason
    weak = _candidate("small", 0.75, (0.70, 0.80), 4_000_000)
    assert recommend([big, weak])[0] == "big"
    # the same size (same architecture): the more accurate one
    twin = _candidate("twin", 0.86, (0.80, 0.92), 10_000_000, latency=1.0)
    assert recommend([twin, big])[0] == "big"


def test_the_random_weight_floor_is_the_first_candidate_without_its_weights():
    assert with_random_floor(["a", "b"]) == ("a", "b", "a:random")
    assert with_random_floor(["a", "b"], include=False) == ("a", "b")
    assert with_random_floor(["a", "b", "a:random"]) == ("a", "b", "a:random"), "not twice"
    with pytest.raises(BakeoffError, match="at least 2 candidates"):
        with_random_floor(["a"])
    with pytest.raises(BakeoffError, match="at least 2 candidates"):
        with_random_floor(["a", " a ", ""])
    with_random_floor(list("abcde"), include=False)
    with pytest.raises(BakeoffError, match="at most 5 candidates.*random-weight floor"):
        with_random_floor(list("abcde"))


def test_a_task_key_differs_with_the_data_and_every_option():
    options = BakeoffOptions(("a", "b"), max_images=100, image_size=32)
    assert task_key("ds1", options) == task_key("ds1", BakeoffOptions(("a", "b"), 100, 32))
    others = [task_key("ds2", options), task_key("ds1", BakeoffOptions(("a", "c"), 100, 32)),
              task_key("ds1", BakeoffOptions(("a", "b"), 200, 32)), task_key("ds1", BakeoffOptions(("a", "b"), 100))]
    assert len({task_key("ds1", options), *others}) == 5
    # the split the bake-off scores on is part of what it is
    from core.config import TrainConfig

    assert task_key("ds1", options, TrainConfig(seed=1)) != task_key("ds1", options, TrainConfig(seed=2))
    assert task_key("ds1", options, TrainConfig()) == task_key("ds1", options, TrainConfig(lr=0.1))


def test_the_bakeoff_splits_the_data_as_the_configured_run_would(small_digits_dir, tmp_path, monkeypatch):
    import core.plan.bakeoff
    from core.config import TrainConfig

    seen = []
    original = core.plan.bakeoff.prepare_data
    monkeypatch.setattr(core.plan.bakeoff, "prepare_data", lambda source, config, ws: seen.append(config) or
                        original(source, config, ws))
    monkeypatch.setattr(core.plan.bakeoff, "run_bakeoff", lambda data, options, progress: data)
    options = BakeoffOptions(("efficientnet_lite0", "efficientnet_lite0:random"))
    data = core.plan.bakeoff.bakeoff(small_digits_dir, options, str(tmp_path), config=TrainConfig(val_fraction=0.3))
    assert seen[0].val_fraction == 0.3 and len(data.val) > len(data.test)


def test_result_rows_are_the_table_of_the_candidates_best_first():
    big = _candidate("big", 0.90, (0.85, 0.95), 10_000_000)
    small = _candidate("small", 0.88, (0.83, 0.93), 4_000_000)
    result = BakeoffResult("ds", ("x", "y"), 80, 20, 32, "CPU", "float32", 32, "rss", (big, small), "small", "why",
                           0.1, 1.0)
    rows = result_rows(result)
    assert [r["candidate"] for r in rows] == ["big", "small"]
    assert [r["recommended"] for r in rows] == [False, True]
    assert rows[0]["val_accuracy"] == 0.90 and (rows[0]["val_accuracy_low"], rows[0]["val_accuracy_high"]) == (0.85, 0.95)
    assert rows[1]["params_m"] == 4.0 and rows[1]["latency_ms_batch"] == 2.5


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory) -> str:
    """Is this face upright? scikit-image's 100 LFW faces (25 px): each as it is, mirrored and slightly rotated,
    upright and upside down (600 images).

    A task for learned features. On scikit-learn's digits, random-weight features beat ImageNet ones
    (strokes on a plain ground, far from photos), so digits cannot show what pretraining buys."""
    from PIL import Image
    from skimage.data import lfw_subset

    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for label in ("upright", "upside_down"):
        (root / label).mkdir()
    for i, face in enumerate(lfw_subset()[:100]):
        img = Image.fromarray((face * 255).astype(np.uint8)).convert("RGB")
        variants = (img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                    img.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR))
        for v, x in enumerate(variants):
            x.save(root / "upright" / f"{i:03d}_{v}.png")
            x.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(root / "upside_down" / f"{i:03d}_{v}.png")
    return str(root)


def test_bakeoff_cli_ranks_pretrained_weights_above_random_ones(faces_dir, tmp_path, capsys):
    html = tmp_path / "bakeoff.html"
    code = main([faces_dir, "--models", "efficientnet_lite0:random,efficientnet_lite0", "--image-size", "96",
                 "--workspace", str(tmp_path), "--html", str(html), "--latency-budget", "0.2"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    first, second = result["candidates"]
    assert (first["name"], second["name"]) == ("efficientnet_lite0", "efficientnet_lite0:random")
    assert first["pretrained"] and not second["pretrained"] and second["weights_source"] == "random-init"
    # 0.85, not 0.9: the three variants of each face (NNN_0/1/2.png) are now kept in one split (core.data.related),
    # so no mirrored copy of a test face is trained on any more
    assert first["linear"]["accuracy"] > 0.85 and first["linear"]["accuracy"] > second["linear"]["accuracy"] + 0.05
    assert result["recommendation"] == "efficientnet_lite0"
    assert first["parameters"] == second["parameters"] > 3_000_000
    for c in (first, second):
        assert c["image_size"] == 96 and c["latency_ms_batch1"] > 0 and c["latency_ms_batch"] > 0
        lo, hi = c["linear_intervals"]["accuracy"]
        assert lo <= c["linear"]["accuracy"] <= hi and 0 <= c["knn"]["accuracy"] <= 1
    assert result["n_train"] + result["n_val"] <= 600 and result["seconds"] > 0
    assert "plotly" in html.read_text()[:200_000].lower()


def test_bakeoff_cli_refuses_bad_input_with_exit_2(small_digits_dir, tmp_path, capsys):
    ws = ["--workspace", str(tmp_path)]
    assert main([small_digits_dir, "--models", "efficientnet_lite0", *ws]) == 2
    assert "2 to 5 candidates" in capsys.readouterr().err
    assert main([small_digits_dir, "--models", "efficientnet_lite0,no_such_model_xyz", *ws]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--models", "efficientnet_lite0,efficientnet_lite1", *ws]) == 2
    assert main([]) == 2


def test_every_phase_of_the_bakeoff_shows_in_order(small_digits_dir, tmp_path):
    from core.plan.bakeoff import bakeoff

    messages = []
    options = BakeoffOptions(("efficientnet_lite0", "efficientnet_lite0:random"), max_images=40, image_size=32,
                             latency_batch=4, latency_budget_s=0.02, n_boot=50)
    result = bakeoff(small_digits_dir, options, str(tmp_path), progress=messages.append)
    phases = ["preparing the data", "loading efficientnet_lite0 (1 of 2)", "loading efficientnet_lite0:random (2 of 2)",
              "decoding 40 images"]
    for name in options.models:
        phases += [f"{name}: extracting features at 32 px", f"{name}: fitting the linear probe",
                   f"{name}: fitting k-NN", f"{name}: scoring on", f"{name}: val accuracy"]
    phases += ["timing the latency and memory of 2 candidates in a clean child process",
               "timing efficientnet_lite0 in a clean child process (1 of 2)",
               "timing efficientnet_lite0:random in a clean child process (2 of 2)"]
    assert len(messages) == len(phases) and all(m.startswith(p) for m, p in zip(messages, phases)), messages
    assert result.latency_conditions.startswith("measured in a clean child process, one model after another")
    for c in result.candidates:
        assert c.latency_ms_batch1 > 0 and c.latency_conditions.startswith("measured in a clean child process")
        assert c.timings["latency"] > 0


def test_the_parameters_say_which_count_is_which():
    from core.plan.bakeoff import parameters_text

    lite0 = _candidate("efficientnet_lite0", 0.92, (0.85, 0.97), 3_371_008)
    assert parameters_text(lite0) == "3.4 M parameters in the trunk (4.7 M with ImageNet's 1000-class head)"
    other = _candidate("resnet34.a1_in1k", 0.9, (0.8, 0.95), 21_000_000)  # off the catalog: no published figure
    assert parameters_text(other) == "21.0 M parameters in the trunk"
    result = BakeoffResult("ds", ("x", "y"), 80, 20, 64, "CPU", "fp32", 32, "rss", (lite0, other), "efficientnet_lite0",
                           "why", 0.1, 1.0)
    rows = result_rows(result)
    assert rows[0]["params_m"] == pytest.approx(3.371008) and rows[0]["params_with_head_m"] == 4.65
    assert rows[1]["params_with_head_m"] is None
    assert "M parameters in the trunk" in recommend([lite0, other])[1]
