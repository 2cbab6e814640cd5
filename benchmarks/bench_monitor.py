"""Monitoring a served model on data the tests never use: does drift get caught, how often does it cry wolf, how
many images does it take, and how long does a check of 100,000 logged predictions take?

    python benchmarks/bench_monitor.py [--workdir DIR] [--windows 20] [--window-size 200]

1. A dataset of 64x64 crops of four of scikit-image's sample photographs (astronaut, chelsea, coffee, rocket; the
   class is the photograph), 200 per class at seeded random positions; a one-epoch run at 32 px on it (the default
   backbone), exported (with its reference.npz) and registered as the champion of "crops".
2. Production windows, each logged in its own hour as the server logs them (PNG bytes -> load_rgb -> the bundle's
   preprocessing -> ONNX Runtime -> probabilities and embedding, role "served"), then one check_model per window:
   fresh in-distribution crops (other random positions; `--windows` of them: the false-alarm rate), and shifted
   ones: Gaussian noise (sigma 40), blur (radius 2), darkened (x0.4), a new source (crops of three photographs the
   model never saw: hubble_deep_field, immunohistochemistry, retina).
3. Images needed: for each shift, the smallest window (30, 50, 100, 200 images) at which all of 3 seeded windows
   raise the drift alert.
4. 100,000 synthetic predictions over 7 days (the reference's val embeddings plus noise, confidences, latencies,
   5% with feedback) in a fresh workspace: the time of one check_model over them.

Prints Markdown tables and, last, one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
NEW_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina")
CROP, PHOTO_SIDE = 64, 256
SIZES = (30, 50, 100, 200)


def photo(name: str) -> Image.Image:
    import skimage.data

    im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    scale = PHOTO_SIDE / min(im.size)
    return im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)


def crops(photos: list[Image.Image], n: int, rng: np.random.Generator) -> list[tuple[int, Image.Image]]:
    """n (photo index, crop) pairs, the photo chosen at random for each."""
    out = []
    for _ in range(n):
        k = int(rng.integers(len(photos)))
        im = photos[k]
        x, y = int(rng.integers(im.width - CROP)), int(rng.integers(im.height - CROP))
        out.append((k, im.crop((x, y, x + CROP, y + CROP))))
    return out


def shift(kind: str, im: Image.Image, rng: np.random.Generator) -> Image.Image:
    if kind == "noise":
        arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 40, (CROP, CROP, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur(2))
    if kind == "dark":
        return Image.fromarray((np.asarray(im, dtype=np.float32) * 0.4).astype(np.uint8))
    return im


def make_dataset(folder: str, per_class: int = 200) -> None:
    rng = np.random.default_rng(0)
    photos = [photo(p) for p in TRAIN_PHOTOS]
    counts = [0] * len(photos)
    for k, im in crops(photos, per_class * len(photos) * 3, rng):
        if counts[k] < per_class:
            os.makedirs(os.path.join(folder, TRAIN_PHOTOS[k]), exist_ok=True)
            im.save(os.path.join(folder, TRAIN_PHOTOS[k], f"{TRAIN_PHOTOS[k]}_{counts[k]:03d}.png"))
            counts[k] += 1


class Served:
    """The bundle as the server runs it, logging rows into the workspace's prediction log."""

    def __init__(self, root: str, model: str):
        from core.deploy.bundle import OnnxModel
        from core.deploy.predlog import PredictionLog
        from core.deploy.registry import Registry

        version = Registry(os.path.join(root, "registry")).resolve(model)
        self.bundle, self.version, self.model = version.bundle(), version.version, model
        self.onnx = OnnxModel(self.bundle)
        self.log = PredictionLog.for_workspace(root)

    def serve(self, images: list[Image.Image], at: float, labels: list[str] | None = None) -> None:
        from core.data.images import load_rgb

        started = time.perf_counter()
        blobs = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, "PNG")
            blobs.append(buf.getvalue())
        rgbs = [load_rgb(b) for b in blobs]
        probs, emb = self.onnx.probabilities(np.stack([self.bundle.preprocess(r) for r in rgbs]))
        ms = (time.perf_counter() - started) * 1000 / len(images)
        classes = self.bundle.classes
        ids = self.log.log_many(
            {"at": at + i, "model": self.model, "version": self.version, "input_sha256": "x", "width": r.width,
             "height": r.height, "predicted": classes[int(p.argmax())], "confidence": float(p.max()),
             "top_k": [[classes[int(p.argmax())], float(p.max())]], "latency_ms": ms, "embedding": e}
            for i, (r, p, e) in enumerate(zip(rgbs, probs, emb)))
        for pid, label in zip(ids, labels or []):
            self.log.add_feedback(pid, label)


def window_check(root: str, served: Served, images: list[Image.Image], slot: list[float]) -> dict:
    from core.monitor.check import check_model

    start = slot[0]
    slot[0] += 3600.0
    served.serve(images, start)
    report = check_model(root, served.model, since=start, until=start + 3600.0)
    kinds = sorted(a.kind for a in report.alerts)
    return {"n": report.windows[0].n, "auc": report.drift.auc, "p": report.drift.p_value,
            "drift": report.drift.drifted, "alerts": kinds, "mean_conf": report.windows[0].mean_confidence,
            "tvd": report.windows[0].class_tvd, "check_s": report.seconds}


def bench_100k(root: str, bundle_dir: str, n: int = 100_000) -> dict:
    from core.deploy.predlog import PredictionLog
    from core.deploy.reference import load_reference
    from core.deploy.registry import Registry
    from core.monitor.check import check_model

    Registry(os.path.join(root, "registry")).register(bundle_dir, "synthetic")
    ref = load_reference(bundle_dir)
    classes = list(ref.classes)
    base = ref.val_embeddings.astype(np.float32)
    log = PredictionLog.for_workspace(root)
    rng = np.random.default_rng(0)
    t0 = time.time() - 7 * 86400
    started = time.perf_counter()
    for s in range(0, n, 5000):
        k = min(5000, n - s)
        emb = base[rng.integers(len(base), size=k)] + rng.normal(0, 0.05, (k, base.shape[1]))
        pred = rng.integers(len(classes), size=k)
        conf = rng.uniform(0.4, 1.0, size=k)
        lat = rng.gamma(4, 3, size=k)
        ids = log.log_many({"at": t0 + (s + i) * 7 * 86400 / n, "model": "synthetic", "version": 1,
                            "input_sha256": "x", "width": 64, "height": 64, "predicted": classes[pred[i]],
                            "confidence": float(conf[i]), "top_k": [[classes[pred[i]], float(conf[i])]],
                            "latency_ms": float(lat[i]), "embedding": emb[i]} for i in range(k))
        for pid in ids[::20]:
            log.add_feedback(pid, classes[int(rng.integers(len(classes)))])
    write_s = time.perf_counter() - started
    times = []
    for _ in range(3):
        report = check_model(root, "synthetic", since="7d")
        times.append(report.seconds)
    return {"rows": n, "write_s": round(write_s, 1), "check_s": times, "windows": len(report.windows),
            "served": sum(w.n for w in report.windows), "labelled": sum(w.n_labelled for w in report.windows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--windows", type=int, default=20, help="in-distribution windows (false-alarm rate)")
    parser.add_argument("--window-size", type=int, default=200)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    from core.config import AugmentSpec, TrainConfig
    from core.deploy.export import export_run
    from core.deploy.registry import Registry
    from core.runs.launch import start_run

    work = args.workdir or tempfile.mkdtemp(prefix="bench-monitor-")
    figures: dict = {"workdir": work}
    t = time.perf_counter()
    make_dataset(os.path.join(work, "data"))
    config = TrainConfig(image_size=32, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                         early_stopping_patience=0, group_by="names", crossval_folds=0)
    summary = start_run(config, os.path.join(work, "data"), os.path.join(work, "runs"))
    figures["train_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    export = export_run(os.path.join(work, "runs"), summary["run_id"], "onnx")
    info = json.load(open(os.path.join(export.bundle_dir, "bundle.json")))
    figures.update(export_s=round(time.perf_counter() - t, 1), reference=info["reference"],
                   val_accuracy=None)
    root = os.path.join(work, "workspace")
    registry = Registry(os.path.join(root, "registry"))
    registry.register(export.bundle_dir, "crops")
    registry.set_alias("crops", "champion", 1)
    from core.deploy.reference import load_reference

    ref = load_reference(export.bundle_dir)
    figures["val_accuracy"], figures["val_mean_confidence"] = ref.val_accuracy, ref.mean_confidence
    served = Served(root, "crops")
    train_photos, new_photos = [photo(p) for p in TRAIN_PHOTOS], [photo(p) for p in NEW_PHOTOS]
    slot = [time.time() - 30 * 86400]
    rng = np.random.default_rng(1)

    rows = []
    for w in range(args.windows):
        images = [im for _, im in crops(train_photos, args.window_size, rng)]
        rows.append({"scenario": f"in-distribution {w + 1}", **window_check(root, served, images, slot)})
    false_alarms = sum(r["drift"] for r in rows)
    any_alarms = sum(bool(r["alerts"]) for r in rows)
    for kind in ("noise", "blur", "dark", "new source"):
        source = new_photos if kind == "new source" else train_photos
        images = [shift(kind, im, rng) for _, im in crops(source, args.window_size, rng)]
        rows.append({"scenario": kind, **window_check(root, served, images, slot)})
    figures.update(windows=rows, false_alarms=false_alarms, any_alert_windows=any_alarms)

    needed = {}
    for kind in ("noise", "blur", "dark", "new source"):
        source = new_photos if kind == "new source" else train_photos
        needed[kind] = None
        for size in SIZES:
            hits = [window_check(root, served, [shift(kind, im, rng) for _, im in crops(source, size, rng)],
                                 slot)["drift"] for _ in range(3)]
            if all(hits):
                needed[kind] = size
                break
    figures["images_needed"] = needed
    figures["check_100k"] = bench_100k(os.path.join(work, "ws100k"), export.bundle_dir, args.rows)

    print(f"\nrun: train {figures['train_s']} s, export {figures['export_s']} s (reference "
          f"{figures['reference']['seconds']} s), val accuracy {ref.val_accuracy:.3f}, val mean confidence "
          f"{ref.mean_confidence:.3f}\n")
    print("| window | n | domain AUC | MMD p | drift alert | open alerts | mean conf | class TVD |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['n']} | {r['auc']:.3f} | {r['p']:.3g} | {'yes' if r['drift'] else 'no'} | "
              f"{', '.join(r['alerts']) or '-'} | {r['mean_conf']:.3f} | {r['tvd']:.3f} |")
    print(f"\nfalse drift alarms: {false_alarms} of {args.windows} in-distribution windows; windows with any alert: "
          f"{any_alarms} of {args.windows}")
    print("\n| shift | smallest window (of 30/50/100/200) where 3 of 3 seeded windows alert |\n|---|---:|")
    for kind, size in needed.items():
        print(f"| {kind} | {size if size else 'not within 200'} |")
    c = figures["check_100k"]
    print(f"\ncheck_model over {c['served']:,} logged predictions ({c['labelled']:,} with feedback, "
          f"{c['windows']} daily windows): {', '.join(f'{s:.2f}' for s in c['check_s'])} s (3 runs); writing "
          f"them took {c['write_s']} s")
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
