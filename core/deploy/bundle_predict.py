"""Run an exported Transfer Studio bundle with only onnxruntime, numpy and Pillow.

This file is copied verbatim into every bundle as ``predict.py``, and it is also the preprocessing the studio's
own server and export parity check use, so the three cannot drift apart:

    python predict.py IMAGE [IMAGE ...] [--top-k 5]      (run inside the bundle folder, or pass --bundle DIR)

prints one JSON line per image: {"image", "class", "confidence", "top_k": [[class, probability], ...]}.

Preprocessing (the record is in bundle.json's "preprocessing"): decode, apply the EXIF orientation, 16-bit
greyscale scaled to 8 bits, transparency composited on white, RGB; the shorter side resized to `cache_size`
with `interpolation`, a centred `cache_size` square cropped, then a centred `input_size` square; scaled to
[0, 1], minus `mean`, divided by `std`, channels first (N, 3, H, W) float32. It is the training code's
evaluation path (core/model/preprocess.py) written with numpy alone.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image

_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def to_rgb(im: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB: EXIF orientation applied, high bit depths scaled, alpha on white."""
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
        orientation = 1
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return _high_depth_to_l(im).convert("RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = (arr.astype(np.uint32) * 255 + 32767) // 65535
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if im.mode == "I" and lo >= 0 and hi <= 65535:
            out = (arr.astype(np.int64) * 255 + 32767) // 65535
        elif im.mode == "F" and lo >= 0 and hi <= 1:
            out = np.rint(arr * 255.0)
        else:
            out = np.rint((arr - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(out.astype(np.uint8), "L")


def preprocess(rgb: Image.Image, prep: dict) -> np.ndarray:
    """One RGB image -> the (3, input_size, input_size) float32 array the network takes."""
    size, crop = int(prep["cache_size"]), int(prep["input_size"])
    w, h = rgb.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = rgb.resize((nw, nh), _FILTERS.get(prep.get("interpolation", "bicubic"), Image.Resampling.BICUBIC))
    left, top = (nw - size) // 2, (nh - size) // 2
    arr = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)  # (S, S, 3)
    if size >= crop:
        off = (size - crop) // 2
        arr = arr[off:off + crop, off:off + crop]
    else:  # crop_pct > 1: bilinear upsampling, as torch's interpolate(align_corners=False)
        arr = _upsample_bilinear(arr, crop)
    x = arr.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    mean = np.asarray(prep["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(prep["std"], dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _upsample_bilinear(arr: np.ndarray, out: int) -> np.ndarray:
    n = arr.shape[0]
    src = np.maximum((np.arange(out, dtype=np.float32) + 0.5) * np.float32(n / out) - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = (src - i0).astype(np.float32)
    a = arr.astype(np.float32)
    rows = a[i0] * (1 - lam)[:, None, None] + a[i1] * lam[:, None, None]
    cols = rows[:, i0] * (1 - lam)[None, :, None] + rows[:, i1] * lam[None, :, None]
    return np.clip(np.rint(cols), 0, 255).astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_bundle(folder: str, threads: int = 0):
    """(onnxruntime session, bundle.json as a dict) of a bundle folder."""
    import onnxruntime as ort

    with open(os.path.join(folder, "bundle.json"), encoding="utf-8") as f:
        info = json.load(f)
    if info.get("status") != "ok":
        raise SystemExit(f"{folder}: this export failed its parity check; do not use it ({info.get('error', '')})")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(os.path.join(folder, info["model_file"]), opts, providers=["CPUExecutionProvider"])
    return session, info


def run(session, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate embedding) of a (N, 3, H, W) float32 batch."""
    logits, embedding = session.run(["logits", "embedding"], {"input": batch})
    return logits, embedding


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Classify images with this bundle (onnxruntime, numpy, Pillow)")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    session, info = load_bundle(args.bundle)
    classes, prep = info["classes"], info["preprocessing"]
    for path in args.images:
        with Image.open(path) as im:
            x = preprocess(to_rgb(im), prep)[None]
        probs = softmax(run(session, x)[0])[0]
        order = np.argsort(-probs)[: args.top_k]
        print(json.dumps({"image": path, "class": classes[int(order[0])], "confidence": float(probs[order[0]]),
                          "top_k": [[classes[int(i)], float(probs[i])] for i in order]}))
    return 0


if __name__ == "__main__":  # the bundle's own script; the studio imports the functions above
    sys.exit(main())
