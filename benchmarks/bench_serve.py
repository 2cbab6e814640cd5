"""The prediction server under concurrent load, against a naive per-request eager PyTorch endpoint, same machine.

    python benchmarks/bench_serve.py                                   # trains a tiny 224-px lite0 run first
    python benchmarks/bench_serve.py --run RUNS_DIR RUN_ID            # export that run's kept model
    python benchmarks/bench_serve.py --bundle BUNDLE_DIR --requests 200

Both endpoints run as uvicorn subprocesses on loopback, one after the other (never competing): the studio's server
(`python -m core serve`: the safe loader, numpy preprocessing, micro-batching into ONNX Runtime, every prediction
logged in SQLite), and a minimal FastAPI app that per request decodes the image, preprocesses it with torch
(PreprocessSpec.image_to_input, the training code's path) and runs the eager PyTorch model from the same checkpoint
at batch 1 in the event loop: one request at a time, nothing batched, nothing logged. The load: `--clients` threads
(default 8), each with one keep-alive connection, posting `--requests` (default 1,000) real 224x224 JPEGs made from
scikit-image's sample photographs as multipart uploads; `--warmup` requests first, not timed.

Prints a Markdown table (throughput, p50/p90/p99 latency, errors) and, last, one JSON line with both figures and
the speedup.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import UploadFile  # at module level: the naive endpoint's annotation must resolve here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = ("astronaut", "chelsea", "coffee", "camera", "rocket", "coins", "immunohistochemistry", "hubble_deep_field",
           "retina", "horse", "clock", "colorwheel", "grass", "gravel", "brick", "moon")


def jpegs(size: int = 224, quality: int = 90) -> list[bytes]:
    """scikit-image's bundled sample photographs, shorter side resized to `size`, centre-cropped square, as JPEG."""
    import skimage.data
    from PIL import Image

    out = []
    for name in SAMPLES:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:
            continue
        im = Image.fromarray(arr).convert("RGB")
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                       Image.Resampling.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        buf = io.BytesIO()
        im.crop((left, top, left + size, top + size)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    if not out:
        raise SystemExit("no scikit-image sample image is available")
    return out


# ---------------------------------------------------------------------------------------------- the naive endpoint
def naive_app(checkpoint: str):
    """Per request: decode, torch preprocessing, eager PyTorch at batch 1 (in the event loop: one at a time)."""
    import torch
    from fastapi import FastAPI

    from core.data.images import load_rgb
    from core.model.checkpoint import load_model

    model, pre, meta = load_model(checkpoint)
    model.eval()
    classes = meta["classes"]
    app = FastAPI()

    @app.post("/predict")
    async def predict(file: UploadFile):
        started = time.perf_counter()
        rgb = load_rgb(await file.read())
        with torch.inference_mode():
            probs = torch.softmax(model(pre.image_to_input(rgb)).float(), dim=1)[0]
        top = int(probs.argmax())
        return {"class": classes[top], "confidence": float(probs[top]),
                "latency_ms": (time.perf_counter() - started) * 1000}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


def _naive_child(checkpoint: str, port: int) -> int:
    import uvicorn

    uvicorn.run(naive_app(checkpoint), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


# ---------------------------------------------------------------------------------------------- load
def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the endpoint at {url} exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer /health within {timeout:g} s")


def load(url: str, images: list[bytes], requests: int, clients: int, warmup: int) -> dict:
    """`clients` threads posting one image per request until `requests` are done; latency of each, throughput."""
    import httpx

    def run(n: int) -> tuple[list[float], int, float]:
        counter, lock, latencies, errors = [0], threading.Lock(), [], [0]

        def client(k: int) -> None:
            with httpx.Client(base_url=url, timeout=60.0, trust_env=False) as http:
                while True:
                    with lock:
                        i = counter[0]
                        counter[0] += 1
                    if i >= n:
                        return
                    started = time.perf_counter()
                    try:
                        r = http.post("/predict", files={"file": (f"{i}.jpg", images[i % len(images)], "image/jpeg")})
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        errors[0] += 0 if ok else 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return latencies, errors[0], time.perf_counter() - t0

    run(warmup)
    latencies, errors, wall = run(requests)
    ms = np.asarray(latencies) * 1000
    return {"requests": requests, "clients": clients, "errors": errors, "seconds": round(wall, 3),
            "throughput_rps": round(requests / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def measure(cmd: list[str], url: str, images: list[bytes], args, env: dict) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if args.quiet else None, env=env,
                            cwd=str(ROOT))
    try:
        _wait_health(url, proc)
        return load(url, images, args.requests, args.clients, args.warmup)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------------------------------------- setup
def _train_tiny(workdir: str, image_size: int) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import export_digits  # tests/conftest.py: scikit-learn's digits as PNG class folders

    from core.config import AugmentSpec, TrainConfig
    from core.runs.launch import start_run

    data = export_digits(os.path.join(workdir, "digits"), per_class=10, size=image_size)
    runs_dir = os.path.join(workdir, "runs")
    config = TrainConfig(image_size=image_size, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                         early_stopping_patience=0, group_by="names", crossval_folds=0, grad_stats=False)
    summary = start_run(config, data, runs_dir)
    return runs_dir, summary["run_id"]


def prepare(args, workdir: str) -> tuple[str, dict]:
    """(bundle folder, setup figures): the given bundle, an export of the given run, or a tiny run trained here."""
    setup: dict = {}
    if args.bundle:
        return os.path.abspath(args.bundle), setup
    from core.deploy.export import export_run

    if args.run:
        runs_dir, run_id = args.run
    else:
        t0 = time.perf_counter()
        print(f"training a tiny efficientnet_lite0 run at {args.image_size} px on digits ...", file=sys.stderr)
        runs_dir, run_id = _train_tiny(workdir, args.image_size)
        setup["train_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    print(f"exporting run {run_id} to ONNX (with its parity check) ...", file=sys.stderr)
    result = export_run(runs_dir, run_id, "onnx", out=os.path.join(workdir, "bundle"), max_parity_images=32)
    setup.update(export_s=round(time.perf_counter() - t0, 1), parity=result.parity)
    if not result.passed:
        raise SystemExit(f"the export failed its parity check ({result.parity}); nothing to serve")
    return result.bundle_dir, setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs=2, metavar=("RUNS_DIR", "RUN_ID"), help="export this run's kept model")
    parser.add_argument("--bundle", help="an exported ONNX bundle folder (its checkpoint feeds the naive endpoint)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224, help="the tiny run's input size (default 224)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--ort-spinning", choices=("on", "off"), default="on")
    parser.add_argument("--workdir", help="keep the run, bundle and prediction log here (default: a temp folder)")
    parser.add_argument("--quiet", action="store_true", help="hide the endpoints' own logs")
    parser.add_argument("--naive-child", nargs=2, metavar=("CHECKPOINT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_child:
        return _naive_child(args.naive_child[0], int(args.naive_child[1]))

    from core.deploy.bundle import Bundle
    from core.deploy.registry import Registry
    from core.deploy.serving import free_port

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_serve-")
    os.makedirs(workdir, exist_ok=True)
    bundle_dir, setup = prepare(args, workdir)
    bundle = Bundle.load(bundle_dir)
    workspace = os.path.join(workdir, "workspace")
    version = Registry(os.path.join(workspace, "registry")).register(bundle_dir, "bench").version
    images = jpegs(224)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("TRANSFER_STUDIO_API_TOKEN", None)
    print(f"{len(images)} JPEGs of 224x224; model {bundle.info.get('architecture_name')} at "
          f"{bundle.preprocessing['input_size']} px; {args.clients} clients, {args.requests} requests each side",
          file=sys.stderr)

    port = free_port()
    served = measure([sys.executable, "-m", "core", "serve", f"bench:{version}", "--workspace", workspace,
                      "--port", str(port), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                      "--threads", str(args.threads), "--ort-spinning", args.ort_spinning], f"http://127.0.0.1:{port}", images, args, env)
    print(f"server: {served}", file=sys.stderr)
    port = free_port()
    naive = measure([sys.executable, str(Path(__file__).resolve()), "--naive-child", bundle.checkpoint_path, str(port)],
                    f"http://127.0.0.1:{port}", images, args, env)
    print(f"naive:  {naive}", file=sys.stderr)

    speedup = round(served["throughput_rps"] / naive["throughput_rps"], 2) if naive["throughput_rps"] else None
    print("\n| endpoint | requests | clients | errors | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in (("studio server (ONNX Runtime, micro-batched, logged)", served),
                      ("naive (eager PyTorch, per request)", naive)):
        print(f"| {name} | {row['requests']} | {row['clients']} | {row['errors']} | {row['throughput_rps']} | "
              f"{row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} |")
    print(f"\nspeedup (throughput): {speedup}x\n")
    import onnxruntime
    import torch

    print(json.dumps({"bench": "serve", "server": served, "naive": naive, "speedup": speedup,
                      "model": bundle.info.get("architecture_name"), "input_size": bundle.preprocessing["input_size"],
                      "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "setup": setup,
                      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                                  "onnxruntime": onnxruntime.__version__}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
