"""What the exported model saw in training, kept in its bundle for monitoring: <bundle>/reference.npz.

Written by core.deploy.export while the bundle is staged (so its sha256 is among the bundle's checked files), read
by core.monitor. Everything in it is computed THROUGH THE EXPORTED MODEL the way the server computes it
(core.deploy.server `_prepare` / `_infer`): the file's bytes -> core.data.images.load_rgb -> the bundle's own
preprocessing (bundle.json, core.deploy.bundle_predict.preprocess) -> the model file -> (softmax of the logits, the
second output, the embedding). A production embedding and a reference embedding are therefore comparable value for
value.

    train_embeddings   (<= 1000, dim) float16   a seeded sample of the training images
    val_embeddings     (<= 500, dim) float16    a seeded sample of the validation images: the drift reference
                                                (held-out images, like production ones; a fine-tuned model maps its
                                                own training images tighter than unseen ones, so comparing
                                                production with train embeddings alone would flag drift that is
                                                only overfitting)
    val_confidence, val_predicted, val_labels   the model's top probability and class on those, and the truth
    val_accuracy       the exported model's accuracy on those val images
    val_class_shares   each class's share of the whole validation split's labels
    train_width, train_height, train_brightness (0-255, mean of the greyscale image), per sampled training image;
    colour_modes / colour_mode_shares            the training images' decoded modes: RGB, L, RGBA, other
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from core.data.images import ImageError, load_rgb
from core.deploy import bundle_predict
from core.errors import StudioError
from core.files import atomic_write

REFERENCE_FILE = "reference.npz"
REFERENCE_FORMAT = "transfer-studio-reference/1"
MAX_TRAIN, MAX_VAL = 1000, 500
COLOUR_MODES = ("RGB", "L", "RGBA", "other")
_BATCH = 64
_BRIGHTNESS_SIDE = 512  # brightness is measured on the image box-reduced to at most this side (the mean is kept)

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # (N, 3, H, W) -> (logits, embedding)


class ReferenceDataError(StudioError, ValueError):
    """A reference.npz that cannot be read (damaged, or of another format)."""


@dataclass(frozen=True, eq=False)
class Reference:
    classes: tuple[str, ...]
    train_embeddings: np.ndarray  # (n, dim) float16
    val_embeddings: np.ndarray  # (m, dim) float16
    val_confidence: np.ndarray  # (m,) float32
    val_predicted: np.ndarray  # (m,) int64 class indices
    val_labels: np.ndarray  # (m,) int64 class indices
    val_accuracy: float | None  # None without val images
    val_class_shares: dict[str, float]
    train_width: np.ndarray  # (n,) float32
    train_height: np.ndarray
    train_brightness: np.ndarray  # 0-255
    colour_mode_shares: dict[str, float]  # COLOUR_MODES -> share of the sampled training images
    meta: dict[str, Any]  # format, counts, seconds, skipped images

    @property
    def mean_confidence(self) -> float | None:
        return float(self.val_confidence.mean()) if len(self.val_confidence) else None

    def low_confidence_share(self, threshold: float) -> float | None:
        return float((self.val_confidence < threshold).mean()) if len(self.val_confidence) else None

    def drift_embeddings(self, min_rows: int = 30) -> np.ndarray:
        """The embeddings production windows are compared with: the val sample, with the training sample added only
        when there are fewer than `min_rows` val images (float32)."""
        if len(self.val_embeddings) >= min_rows or not len(self.train_embeddings):
            return self.val_embeddings.astype(np.float32)
        return np.concatenate([self.val_embeddings, self.train_embeddings]).astype(np.float32)

    def input_summary(self) -> dict[str, float | None]:
        """Medians of width, height and brightness of the sampled training images."""
        def med(a: np.ndarray) -> float | None:
            return float(np.median(a)) if len(a) else None
        return {"width": med(self.train_width), "height": med(self.train_height),
                "brightness": med(self.train_brightness)}


# ---------------------------------------------------------------------------------------------------- writing
def write_reference(bundle_dir: str, data, run_model: Runner | None = None, max_train: int = MAX_TRAIN,
                    max_val: int = MAX_VAL, seed: int = 0, progress: Callable[[str], None] = lambda m: None
                    ) -> dict[str, Any]:
    """Write <bundle_dir>/reference.npz for a (staged) bundle whose bundle.json and model file exist; `data` the
    run's SplitData. `run_model` (logits, embedding) of a batch; default: the bundle's model file, as served.
    Returns a summary (counts, seconds) for bundle.json."""
    started = time.perf_counter()
    with open(os.path.join(bundle_dir, "bundle.json"), encoding="utf-8") as f:
        info = json.load(f)
    prep, classes = info["preprocessing"], [str(c) for c in info["classes"]]
    run_model = run_model or _runner(bundle_dir, info)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _sample(len(data.train), max_train, rng), _sample(len(data.val), max_val, rng)
    progress(f"reference: {len(train_idx)} training and {len(val_idx)} validation images through the exported model")
    train = _through_model([data.train.paths[i] for i in train_idx], prep, run_model, stats=True)
    val = _through_model([data.val.paths[i] for i in val_idx], prep, run_model, stats=False)
    index = {c: i for i, c in enumerate(classes)}
    to_bundle = np.asarray([index.get(str(c), -1) for c in data.classes], dtype=np.int64)
    val_labels = to_bundle[np.asarray([data.val.labels[i] for i in val_idx], dtype=np.int64)[val["kept"]]] \
        if len(val_idx) else np.zeros(0, dtype=np.int64)
    probs = bundle_predict.softmax(val["logits"].astype(np.float64)) if len(val["logits"]) else np.zeros((0, 1))
    predicted = probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, dtype=np.int64)
    shares = np.bincount(to_bundle[np.asarray(data.val.labels, dtype=np.int64)], minlength=len(classes)) \
        if len(data.val) else np.zeros(len(classes))
    modes = np.asarray([COLOUR_MODES.index(m) for m in train["modes"]], dtype=np.int64)
    mode_shares = np.bincount(modes, minlength=len(COLOUR_MODES)) / max(1, len(modes))
    meta = {"format": REFERENCE_FORMAT, "n_train": int(len(train["embedding"])), "n_val": int(len(val["embedding"])),
            "skipped_images": train["skipped"] + val["skipped"], "seed": seed}
    arrays = {
        "classes": np.asarray(classes, dtype=str),
        "train_embeddings": _f16(train["embedding"]), "val_embeddings": _f16(val["embedding"]),
        "val_confidence": probs.max(axis=1).astype(np.float32) if len(probs) else np.zeros(0, np.float32),
        "val_predicted": predicted, "val_labels": val_labels,
        "val_accuracy": np.float64(np.mean(predicted == val_labels) if len(predicted) else np.nan),
        "val_class_shares": (shares / max(1, shares.sum())).astype(np.float64),
        "train_width": np.asarray(train["width"], np.float32), "train_height": np.asarray(train["height"], np.float32),
        "train_brightness": np.asarray(train["brightness"], np.float32),
        "colour_modes": np.asarray(COLOUR_MODES, dtype=str), "colour_mode_shares": mode_shares.astype(np.float64),
    }
    meta["seconds"] = round(time.perf_counter() - started, 2)
    arrays["meta"] = np.asarray(json.dumps(meta))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(os.path.join(bundle_dir, REFERENCE_FILE), write)
    return meta


def brightness(rgb: Image.Image) -> float:
    """Mean greyscale value (0-255) of an RGB image; large images are box-reduced first (the mean is kept)."""
    factor = max(1, max(rgb.size) // _BRIGHTNESS_SIDE)
    small = rgb.reduce(factor) if factor > 1 else rgb
    return float(np.asarray(small.convert("L"), dtype=np.float32).mean())


def colour_mode(mode: str) -> str:
    return mode if mode in COLOUR_MODES else "other"


def file_colour_mode(data: bytes) -> str:
    """The colour mode an image file declares (its header only), as COLOUR_MODES counts it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return colour_mode(im.mode)
    except Exception:  # noqa: BLE001 - already decoded by the safe loader; a header Pillow misreads is "other"
        return "other"


def _through_model(paths: list[str], prep: dict, run_model: Runner, stats: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"logits": [], "embedding": [], "width": [], "height": [], "brightness": [], "modes": [],
                           "kept": [], "skipped": 0}
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            logits, embedding = run_model(np.stack(batch))
            out["logits"].append(np.asarray(logits, np.float32))
            out["embedding"].append(np.asarray(embedding, np.float32))
            batch.clear()

    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
            rgb = load_rgb(blob)
            mode = Image.open(io.BytesIO(blob)).mode if stats else "RGB"  # the header only: no second decode
        except (OSError, ImageError):
            out["skipped"] += 1  # a file gone or unreadable since training: the reference does without it
            continue
        out["kept"].append(i)
        batch.append(bundle_predict.preprocess(rgb, prep))
        if stats:
            out["width"].append(rgb.width)
            out["height"].append(rgb.height)
            out["brightness"].append(brightness(rgb))
            out["modes"].append(colour_mode(mode))
        if len(batch) == _BATCH:
            flush()
    flush()
    for key in ("logits", "embedding"):
        out[key] = np.concatenate(out[key]) if out[key] else np.zeros((0, 0), np.float32)
    out["kept"] = np.asarray(out["kept"], dtype=np.int64)
    return out


def _runner(bundle_dir: str, info: dict) -> Runner:
    path = os.path.join(bundle_dir, info["model_file"])
    if info["model_format"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda batch: bundle_predict.run(session, np.ascontiguousarray(batch, dtype=np.float32))
    import torch

    module = torch.export.load(path).module()

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, embedding = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return logits.float().numpy(), embedding.float().numpy()

    return run


def _sample(n: int, k: int, rng: np.random.Generator) -> list[int]:
    return list(range(n)) if n <= k else sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def _f16(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -65504, 65504).astype(np.float16)  # as the prediction log stores embeddings


# ---------------------------------------------------------------------------------------------------- reading
def load_reference(bundle_dir: str) -> Reference | None:
    """The bundle's reference, or None for a bundle exported before references existed."""
    path = os.path.join(bundle_dir, REFERENCE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        meta = json.loads(str(a["meta"]))
        if meta.get("format") != REFERENCE_FORMAT:
            raise ReferenceDataError(f"{path}: a reference of format {meta.get('format')!r}, not {REFERENCE_FORMAT}")
        classes = tuple(str(c) for c in a["classes"])
        accuracy = float(a["val_accuracy"])
        return Reference(
            classes=classes, train_embeddings=a["train_embeddings"], val_embeddings=a["val_embeddings"],
            val_confidence=a["val_confidence"], val_predicted=a["val_predicted"], val_labels=a["val_labels"],
            val_accuracy=None if np.isnan(accuracy) else accuracy,
            val_class_shares={c: float(s) for c, s in zip(classes, a["val_class_shares"])},
            train_width=a["train_width"], train_height=a["train_height"], train_brightness=a["train_brightness"],
            colour_mode_shares={str(m): float(s) for m, s in zip(a["colour_modes"], a["colour_mode_shares"])},
            meta=meta)
    except ReferenceDataError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ReferenceDataError(f"{path}: damaged ({exc}); export the run again to rebuild it") from None
