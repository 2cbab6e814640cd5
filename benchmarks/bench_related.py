"""How well related images (views of one object) are found from pretrained embeddings: pairs found against
the true views, and how many images are paired where there are no related images at all.

    python benchmarks/devsets.py /tmp/dev
    python benchmarks/bench_related.py --data /tmp/dev --datasets emoji_views,parts_views,stamps,digits,emoji

A dataset's true groups come from its file names (`<object>_v<k>.png`: the views of one object); files
without that pattern have no related partner. Embeddings: core.data.related.EMBEDDING_MODEL at EMBEDDING_SIZE (CPU).
Precision: the share of found pairs (within the groups found) that are views of one object; recall: the
share of true pairs found; for datasets without views, the share of images placed in some group.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.model.embeddings import image_embeddings  # noqa: E402
from core.data.related import embedding_groups  # noqa: E402


def true_group(rel: str) -> str:
    stem = os.path.splitext(rel.rsplit("/", 1)[-1])[0]
    return rel.split("/")[0] + "/" + stem.rsplit("_v", 1)[0] if "_v" in stem else rel


def pairs(groups) -> set[frozenset]:
    return {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/dev")
    parser.add_argument("--datasets", default="emoji_views,parts_views,stamps,digits,faces,emoji,textures,parts")
    args = parser.parse_args(argv)
    print("| dataset | images | seconds to embed | groups found | images grouped | precision | recall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.datasets.split(","):
        root = Path(args.data, name)
        rels = sorted(f"{c}/{f}" for c in os.listdir(root) for f in os.listdir(root / c))
        labels = [r.split("/")[0] for r in rels]
        started = time.perf_counter()
        x = image_embeddings([str(root / r) for r in rels])
        seconds = time.perf_counter() - started
        found = embedding_groups(rels, labels, x)
        truth: dict[str, list[str]] = {}
        for r in rels:
            truth.setdefault(true_group(r), []).append(r)
        true_pairs = pairs(g for g in truth.values() if len(g) > 1)
        got = pairs(found.groups)
        hit = len(got & true_pairs)
        precision = f"{hit / len(got):.2f}" if got and true_pairs else "-"
        recall = f"{hit / len(true_pairs):.2f}" if true_pairs else "-"
        print(f"| {name} | {len(rels)} | {seconds:.1f} | {len(found.groups)} | {found.images} "
              f"({found.images / len(rels):.0%}) | {precision} | {recall} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
