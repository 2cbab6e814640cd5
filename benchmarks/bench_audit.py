"""Time ``audit_dataset`` on 10,000 small images (32x32 PNG, with exact and near duplicates).

    python benchmarks/bench_audit.py [--images 10000] [--workers N]

The first figure is a cold audit of a folder: ingestion (read, sha256, full decode, probe, copy into
the workspace store) plus the audit. The second audits the stored dataset again, from its probes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.audit import audit_dataset  # noqa: E402


def make_images(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """Smooth random pictures; 1% are exact copies and 1% near copies (brightened) of others."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
    made: list[np.ndarray] = []
    for i in range(n):
        label = i % classes
        if made and i % 100 == 7:
            arr = made[rng.integers(len(made))]                          # exact duplicate
        elif made and i % 100 == 42:
            arr = np.clip(made[rng.integers(len(made))].astype(int) + 6, 0, 255).astype(np.uint8)
        else:
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            arr = np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC))
            made.append(arr)
        Image.fromarray(arr).save(root / f"class_{label}" / f"{i:05d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="decode processes (a pool when > 1)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        data, workspace = Path(tmp, "data"), Path(tmp, "ws")
        started = time.perf_counter()
        make_images(data, args.images)
        print(f"generated {args.images} 32x32 PNGs in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        report = audit_dataset(data, workspace_dir=workspace, min_size=32, workers=args.workers)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        audit_dataset(report.root, min_size=32)
        warm = time.perf_counter() - started

        codes = {f.code: len(f.pairs) for f in report.findings if f.pairs}
        print(f"audit_dataset, {report.num_images} images (ingest + audit): {cold:.2f} s "
              f"({report.num_images / cold:.0f} images/s)")
        print(f"audit_dataset again on the stored dataset (probes cached): {warm:.2f} s")
        print(f"duplicate pairs found: {codes}; findings: {report.count('error')} errors, "
              f"{report.count('warning')} warnings, {report.count('info')} info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
