"""core.data.related: related images (views of one object) found by file names and by embeddings, kept in one split."""
from __future__ import annotations

import numpy as np
from PIL import Image

from core.config import TrainConfig
from core.data.related import NONE, embedding_groups, find_related, name_groups
from core.runs.launch import prepare_data


def test_names_sharing_a_stem_form_groups():
    paths = [f"part/part{k}_{v}.png" for k in range(10) for v in range(3)] + \
            [f"ok/unit{k}-{v}.png" for k in range(6) for v in range(2)]
    found = name_groups(paths, [p.split("/")[0] for p in paths])
    assert found.source == "names"
    assert len(found.groups) == 16 and found.images == len(paths)
    assert ("part/part3_0.png", "part/part3_1.png", "part/part3_2.png") in found.groups


def test_a_numbered_sequence_spanning_the_class_is_not_a_group():
    paths = [f"{c}/IMG_{i:04d}.png" for c in ("a", "b") for i in range(50)]
    assert name_groups(paths, [p.split("/")[0] for p in paths]) is NONE


def test_a_folder_per_object_below_the_class_folder_is_a_group():
    paths = [f"mug/obj{k}/view{v}.png" for k in range(8) for v in range(4)] + [f"cup/{i}.png" for i in range(20)]
    found = name_groups(paths, [p.split("/")[0] for p in paths])
    assert len(found.groups) == 8 and all(len(g) == 4 for g in found.groups)


def _clusters(rng, classes: int, per_class: int, dim: int = 64, spread: float = 1.0):
    centres = rng.normal(size=(classes, dim)) * 3
    x = np.concatenate([centres[c] + rng.normal(size=(per_class, dim)) * spread for c in range(classes)])
    labels = [f"c{c}" for c in range(classes) for _ in range(per_class)]
    return x, labels


def test_embeddings_find_planted_views_and_little_else():
    rng = np.random.default_rng(0)
    x, labels = _clusters(rng, 4, 40)
    paths = [f"{label}/img{i}.png" for i, label in enumerate(labels)]
    clean = embedding_groups(paths, labels, x)
    assert clean.images <= 0.15 * len(paths)  # no related images: few pairs, none large
    # plant second and third views of 10 images: the same point, slightly moved
    views, view_labels, view_paths = [x], list(labels), list(paths)
    for k, i in enumerate(range(0, 160, 16)):
        for v in range(2):
            views.append(x[i:i + 1] + rng.normal(size=(1, x.shape[1])) * 0.05)
            view_labels.append(labels[i])
            view_paths.append(f"{labels[i]}/view{k}_{v}.png")
    found = embedding_groups(view_paths, view_labels, np.concatenate(views))
    planted = {frozenset({paths[i], f"{labels[i]}/view{k}_0.png", f"{labels[i]}/view{k}_1.png"})
               for k, i in enumerate(range(0, 160, 16))}
    found_sets = [set(g) for g in found.groups]
    assert all(any(p <= g for g in found_sets) for p in planted)  # every planted trio kept together
    assert all(len(g) <= 0.25 * 40 + 3 for g in found.groups)  # and no group swallows its class


def test_explicit_groups_win_and_none_turns_inference_off():
    paths = [f"a/x{k}_{v}.png" for k in range(5) for v in range(2)]
    labels = ["a"] * len(paths)
    found = find_related(paths, labels, explicit=True)
    assert [r.source for r in found] == ["csv"] and not found[0].groups
    assert find_related(paths, labels, explicit=False, group_by="none") == ()


def _photo(rng, side: int = 48) -> np.ndarray:
    small = rng.integers(0, 255, (6, 6, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))


def test_planted_views_with_unrelated_names_stay_in_one_split(tmp_path):
    """Views of one 'object' (shifted, re-lit copies) under unrelated file names: the embeddings must find
    them, and the split must keep each object's views together."""
    rng = np.random.default_rng(1)
    names = iter(rng.permutation(10_000))
    objects = {}
    for label in ("a", "b", "c"):
        for k in range(12):
            base = _photo(rng)
            files = []
            for v in range(3):
                view = np.roll(base, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
                view = np.clip(view.astype(int) + int(rng.integers(-12, 13)), 0, 255).astype(np.uint8)
                name = f"{label}/{next(names):05d}.png"
                (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
                Image.fromarray(view).save(tmp_path / "data" / name)
                files.append(name)
            objects[(label, k)] = files
    manifest = prepare_data(str(tmp_path / "data"), TrainConfig(seed=3), str(tmp_path / "ws"))
    assert any(g["source"] == "embeddings" and g["groups"] for g in manifest.grouping)
    split = {r.path: r.split for r in manifest.rows}
    scattered = [files for files in objects.values() if len({split[f] for f in files}) > 1]
    # measured (fp32 embeddings, any CPU): 7 of 36 here, 2 and 2 with this data's seed at 2 and 3; with
    # group_by="names" (no embeddings) 27, 26 and 25 of 36 scatter
    assert len(scattered) <= 8, scattered
    ungrouped = prepare_data(str(tmp_path / "data"), TrainConfig(seed=3, group_by="none"), str(tmp_path / "ws"))
    split = {r.path: r.split for r in ungrouped.rows}
    assert sum(len({split[f] for f in files}) > 1 for files in objects.values()) > 15
