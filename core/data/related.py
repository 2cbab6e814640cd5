"""Related images: different pictures of one thing (views of an object, frames of a video, one patient,
one part), which must share a split or validation scores memory instead of generalisation.

Exact and near duplicates (core.data.duplicates) are copies of one picture. Related images are not copies, so pixel
hashes miss them. Two kinds of evidence find them:

- file names: `part12_3.png` and `part12_4.png` share a stem, `obj7/view1.png` sits in a folder per object;
  a naming rule is used only where it is informative (it makes groups, and no group holds more than a
  quarter of its class, as `IMG_0001.png` ... `IMG_0500.png` would);
- pretrained embeddings: two images of one class that are far closer to each other than each is to its
  usual neighbours (under half the distance to its nearest tenth of the class) are taken to show one thing
  twice: another angle, scale or background. Groups grow by single linkage, closest first, and never past
  a quarter of their class, so a class whose images all look alike is not merged into one group.
  Measured on development sets with three views per object (benchmarks/bench_related.py): 90% of the
  pairs found were true views, 76% of the true pairs were found; on sets without related images, 5-11%
  of the images were paired (harmless: a pair kept in one split costs the split almost nothing).

Explicit groups (a CSV `group` column) always win: where a dataset has them, nothing is inferred.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from core.config import GROUP_BY

MAX_GROUP_SHARE = 0.25  # no inferred group may hold more than this share of its class's images
CLOSENESS = 0.5  # related: closer than this share of the images' usual neighbour distance
NEIGHBOUR_SHARE = 0.1  # an image's usual neighbour distance: to its nearest tenth of the class
EMBEDDING_MODEL = "efficientnet_lite0"  # offline, small; one model for every dataset, so splits don't depend on it
EMBEDDING_SIZE = 128
MAX_EXAMPLES = 5
_TOKENS = re.compile(r"[\s._\-]+")
_NUMBER_TAIL = re.compile(r"^(.*?)[\s._\-]*\d+$")


@dataclass(frozen=True)
class RelatedGroups:
    """Groups of sample paths (each of 2 or more, within one class) inferred by one kind of evidence."""

    source: str  # "csv" | "names" | "embeddings" | "none"
    rule: str  # how they were found, in words
    groups: tuple[tuple[str, ...], ...]  # sorted paths per group, groups sorted

    @property
    def images(self) -> int:
        return sum(len(g) for g in self.groups)

    def examples(self, n: int = MAX_EXAMPLES) -> tuple[tuple[str, ...], ...]:
        """The largest groups first: what a person looks at to judge the rule."""
        return tuple(sorted(self.groups, key=lambda g: (-len(g), g))[:n])

    def to_dict(self) -> dict:
        return {"source": self.source, "rule": self.rule, "groups": len(self.groups), "images": self.images,
                "examples": [list(g) for g in self.examples()]}


NONE = RelatedGroups("none", "no related images found", ())


# ------------------------------------------------------------------------------------------ file names
def _folder_key(path: str) -> str | None:
    """class/<object>/file.png: the folder the file sits in, when it is below its class folder."""
    parts = path.split("/")
    return "/".join(parts[:-1]) if len(parts) >= 3 else None


def _number_key(path: str) -> str | None:
    """part12_3.png -> part12: the stem without its trailing number."""
    stem = os.path.splitext(path.rsplit("/", 1)[-1])[0]
    match = _NUMBER_TAIL.match(stem)
    return match.group(1) if match and match.group(1) and match.group(1) != stem else None


def _token_key(path: str) -> str | None:
    """part12_left.png -> part12: the stem without its last word."""
    tokens = [t for t in _TOKENS.split(os.path.splitext(path.rsplit("/", 1)[-1])[0]) if t]
    return "_".join(tokens[:-1]) if len(tokens) > 1 else None


NAME_RULES: tuple[tuple[str, Callable[[str], str | None], str], ...] = (
    ("folder", _folder_key, "files in one folder below their class folder (class/<object>/file)"),
    ("number", _number_key, "files whose names differ only in a trailing number (part12_3, part12_4)"),
    ("token", _token_key, "files whose names differ only in their last word (part12_left, part12_right)"),
)


def _informative(groups: dict[tuple[str, str], list[str]], class_sizes: dict[str, int]) -> bool:
    multi = [g for g in groups.values() if len(g) > 1]
    if len(multi) < 2:
        return False
    return all(len(paths) <= max(2, MAX_GROUP_SHARE * class_sizes[label]) for (label, _), paths in groups.items())


def name_groups(paths: Sequence[str], labels: Sequence[str]) -> RelatedGroups:
    """Groups from the first naming rule that is informative on this data (see the module docstring)."""
    class_sizes: dict[str, int] = defaultdict(int)
    for label in labels:
        class_sizes[label] += 1
    best: tuple[int, str, list[list[str]]] | None = None
    for _, key_of, rule in NAME_RULES:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for path, label in zip(paths, labels):
            key = key_of(path)
            if key is not None:
                groups[(label, key)].append(path)
        if not _informative(groups, class_sizes):
            continue
        multi = [sorted(g) for g in groups.values() if len(g) > 1]
        covered = sum(len(g) for g in multi)
        if best is None or covered > best[0]:
            best = (covered, rule, multi)
    if best is None:
        return NONE
    return RelatedGroups("names", best[1], tuple(sorted(tuple(g) for g in best[2])))


# ------------------------------------------------------------------------------------------ embeddings
def embedding_groups(paths: Sequence[str], labels: Sequence[str], embeddings: np.ndarray,
                     closeness: float = CLOSENESS, neighbour_share: float = NEIGHBOUR_SHARE,
                     max_share: float = MAX_GROUP_SHARE) -> RelatedGroups:
    """Groups of same-class images far closer to each other than to their other neighbours.

    Each image's scale is its cosine distance to its k-th nearest image of its class (k: a tenth of the
    class, 5 to 50). Two images are related when their distance is below `closeness` times the smaller of
    their two scales: two views of one object sit much closer than the class's images do to each other,
    while images with no related partner thin out smoothly. Groups grow by single linkage, closest pairs
    first, never past `max_share` of their class. `embeddings`: (N, D) features in `paths` order.
    """
    x = np.asarray(embeddings, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels_arr = np.asarray(labels)
    pairs: list[tuple[float, int, int]] = []
    cap: dict[int, int] = {}
    for label in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == label)
        n = len(idx)
        if n < 8:  # too few to tell a close pair from a class of look-alikes
            continue
        k = int(min(n - 2, max(5, min(50, round(neighbour_share * n)))))
        scale = np.empty(n, np.float32)  # each image's distance to its k-th nearest image of the class
        for start in range(0, n, 2048):
            rows = idx[start:start + 2048]
            dist = 1.0 - x[rows] @ x[idx].T
            dist[np.arange(len(rows)), start + np.arange(len(rows))] = np.inf
            scale[start:start + len(rows)] = np.partition(dist, k, axis=1)[:, k]
        for start in range(0, n, 2048):
            rows = idx[start:start + 2048]
            dist = 1.0 - x[rows] @ x[idx].T
            local = np.arange(start, start + len(rows))
            limit = closeness * np.minimum(scale[local][:, None], scale[None, :])
            ii, jj = np.nonzero((dist < limit) & (np.arange(n)[None, :] > local[:, None]))
            pairs.extend(zip(dist[ii, jj].tolist(), idx[local[ii]].tolist(), idx[jj].tolist()))
        for i in idx:
            cap[int(i)] = max(2, int(max_share * n))
    if not pairs:
        return NONE
    parent = list(range(len(x)))
    count = [1] * len(x)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in sorted(pairs):  # single linkage, closest first, capped per class
        ri, rj = find(i), find(j)
        if ri != rj and count[ri] + count[rj] <= cap[i]:
            parent[rj] = ri
            count[ri] += count[rj]
    members: dict[int, list[str]] = defaultdict(list)
    for i, path in enumerate(paths):
        members[find(i)].append(path)
    groups = tuple(sorted(tuple(sorted(g)) for g in members.values() if len(g) > 1))
    if not groups:
        return NONE
    rule = (f"images of one class far closer to each other ({EMBEDDING_MODEL} features: cosine distance under "
            f"{closeness:g} x that of their {neighbour_share:.0%}-of-class nearest neighbour) than to the rest")
    return RelatedGroups("embeddings", rule, groups)


# --------------------------------------------------------------------------------------------- together
def merge(*found: RelatedGroups) -> tuple[tuple[str, ...], ...]:
    """Every group of every source, as path groups for core.data.splits.split_dataset (which unites overlaps)."""
    return tuple(g for r in found for g in r.groups)


AUTO_EMBED_MAX = {"cpu": 5_000, "gpu": 100_000}  # auto looks at embeddings up to this many images (about a minute)


def find_related(paths: Sequence[str], labels: Sequence[str], explicit: bool, group_by: str = "auto",
                 embed: Callable[[], np.ndarray] | None = None, on_gpu: bool = False) -> tuple[RelatedGroups, ...]:
    """What `group_by` asks for: "auto" (names, and embeddings up to AUTO_EMBED_MAX images), "names",
    "embeddings" (names and embeddings at any size) or "none". `explicit`: the data carries its own groups
    (a CSV `group` column), which always win: nothing is inferred. `embed()` computes the embeddings of
    `paths` in order (called only when they are needed)."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by={group_by!r} is not supported; choose one of {', '.join(GROUP_BY)}")
    if group_by == "none":
        return ()
    if explicit:
        return (RelatedGroups("csv", "the data's own groups (the CSV's group column); nothing inferred", ()),)
    found = [name_groups(paths, labels)]
    limit = AUTO_EMBED_MAX["gpu" if on_gpu else "cpu"]
    if embed is not None and (group_by == "embeddings" or (group_by == "auto" and len(paths) <= limit)):
        found.append(embedding_groups(paths, labels, embed()))
    elif group_by == "auto" and embed is not None:
        found.append(RelatedGroups("none", f"embeddings not compared: {len(paths):,} images is over the automatic "
                                   f"limit of {limit:,} (group_by=\"embeddings\" compares them anyway)", ()))
    return tuple(r for r in found if r.groups or r.rule != NONE.rule)
