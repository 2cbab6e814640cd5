"""The demo data: scikit-learn's bundled digits (1797 8x8 greyscale images, classes 0..9), read without
importing sklearn, and written out as 32x32 RGB PNGs in class folders (``core.data.ingest.demo_dataset``
stores them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.datasets.load_digits()`` images (N, 8, 8) with values 0..16, and targets.

    Reads the CSV that scikit-learn bundles directly: importing sklearn costs ~2 s, this ~50 ms.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    bundled = [Path(p, "datasets", "data", "digits.csv.gz") for p in locations]
    for path in bundled:
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits  # layout changed: take the slow, public road

    digits = load_digits()
    return digits.images, digits.target


def _export_digits(images: np.ndarray, targets: np.ndarray, export: Path) -> None:
    """The digits as 32x32 RGB PNGs in ``export/<class>/<index>.png``."""
    for i, (pixels, target) in enumerate(zip(images, targets)):
        grey = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
        big = np.kron(grey, np.ones((4, 4), dtype=np.uint8))       # 8x8 -> 32x32, nearest
        folder = export / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([big] * 3, axis=-1), "RGB").save(folder / f"{i:04d}.png",
                                                                   optimize=False)
