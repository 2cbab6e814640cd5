"""The prediction server: a FastAPI app serving a registry model's ONNX bundle with ONNX Runtime.

    POST /predict    one or many images (multipart "file"/"files", or JSON {"images": [base64, ...]})
    POST /feedback   {"prediction_id", "label", "comment"?}: the true label of a logged prediction
    GET  /health     the model and version served, uptime (never behind the token)
    GET  /metrics    Prometheus text: requests, errors, latency, predictions per version, batch sizes

Images are decoded by core.data.images.load_rgb (the dataset ingest's safe loader) and preprocessed by the bundle's
own rule (the training code's evaluation path); concurrent requests share ONNX Runtime calls through the
micro-batcher. Every prediction is in the log (core.deploy.predlog) before its response is sent. Bad input is a
4xx JSON {"error": ...} (core.deploy.api: the shapes, the body limit enforced while the body streams in, the
metrics). When the served alias moves, the new version is loaded whole before it replaces the old one
(core.deploy.hotswap); requests already preprocessed for the old one finish on it. With a challenger
(ServeConfig.challenger), core.deploy.shadow routes: shadow (the challenger's predictions logged beside the
champion's after each response) or A/B (a share of requests answered by the challenger).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from core.data.images import load_rgb
from core.data.limits import IngestLimits
from core.data.types import ImageError
from core.deploy.api import (
    ERRORS,
    PREDICT_BODY,
    ApiError,
    BodyLimit,
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    Metrics,
    Observe,
    PredictResponse,
)
from core.deploy.batching import BatcherStopped, MicroBatcher
from core.deploy.hotswap import ModelHolder, Served
from core.deploy.predlog import LabelNotInClasses, PredictionLog, UnknownPrediction
from core.deploy.reference import brightness, file_colour_mode
from core.deploy.shadow import Router

TOKEN_ENV = "TRANSFER_STUDIO_API_TOKEN"
logger = logging.getLogger("core.deploy.server")


@dataclass(frozen=True)
class ServeConfig:
    ref: str                                    # MODEL, MODEL@ALIAS (followed as it moves) or MODEL:VERSION
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 20 * 1024**2          # counted while the body streams in
    max_images: int = 32                        # per request
    max_pixels: int = IngestLimits().max_image_pixels  # width * height of one image
    top_k: int = 5
    max_batch: int = 32                         # micro-batching: items per ONNX Runtime call
    max_wait_ms: float = 5.0                    # and the longest wait for more after the first
    log_images: bool = False                    # keep each input image in the prediction log (under the cap)
    image_log_cap_bytes: int = 2 * 1024**2
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None, repr=False)
    poll_seconds: float = 1.0                   # how often a followed alias is checked
    threads: int = 0                            # ONNX Runtime intra-op threads; 0: its default (all cores)
    spinning: bool = True                       # ONNX Runtime's idle threads spin (True) or sleep
    challenger: str | None = None               # a second ref (e.g. MODEL@challenger) beside the served one
    challenger_mode: str = "shadow"             # "shadow": logged only; "ab": answers ab_share of the requests
    ab_share: float = 0.1


# ----------------------------------------------------------------------------------------- the app
def create_app(config: ServeConfig, registry: Any, ref: str | None = None, log: PredictionLog | None = None) -> FastAPI:
    """The server's app for registry model `ref` (default: config.ref), logging to `log` (default: the workspace's,
    beside the registry). The model is loaded now (a bad ref or bundle raises the registry's or bundle's
    StudioError); the alias watcher and batcher run until the app shuts down (its lifespan) or `app.state.close()`."""
    ref = ref or config.ref
    if log is None:  # the workspace's own: <root>/registry beside <root>/serving/predictions.db
        log = PredictionLog.for_workspace(os.path.dirname(os.path.abspath(registry.root)),
                                          image_cap_bytes=config.image_log_cap_bytes)
    metrics = Metrics()
    holder = ModelHolder(registry, ref, threads=config.threads, poll_seconds=config.poll_seconds,
                         spinning=config.spinning,
                         on_load=lambda s: log.set_classes(s.name, s.version, s.classes),
                         on_switch=lambda s: (metrics.switches.inc(), metrics.served.labels(s.name).set(s.version)))
    metrics.served.labels(holder.current.name).set(holder.current.version)
    rival = None
    if config.challenger:
        rival = ModelHolder(registry, config.challenger, threads=config.threads, poll_seconds=config.poll_seconds,
                            spinning=config.spinning, on_load=lambda s: log.set_classes(s.name, s.version, s.classes))
    router = Router(holder, rival, config.challenger_mode, config.ab_share)
    batcher = MicroBatcher(_infer, config.max_batch, config.max_wait_ms, name=f"batcher-{holder.current.name}",
                           on_batch=lambda served, size, seconds: metrics.batch_size.observe(size))
    holder.start()
    router.start()
    started = time.monotonic()

    def close() -> None:
        holder.stop()
        router.stop()
        batcher.stop()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        close()

    app = FastAPI(title="Transfer Studio prediction server", lifespan=lifespan,
                  description=f"Serves registry model `{ref}` (ONNX Runtime). Send images to /predict; correct a "
                  "prediction with /feedback. With TRANSFER_STUDIO_API_TOKEN set, /predict, /feedback and /metrics "
                  "need `Authorization: Bearer <token>`.")
    app.state.config, app.state.holder, app.state.batcher, app.state.log = config, holder, batcher, log
    app.state.router = router
    app.state.metrics, app.state.close = metrics, close

    async def authorised(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.token.encode()):
            raise ApiError(401, "missing or wrong API token: send `Authorization: Bearer <token>` (the server's "
                           f"{TOKEN_ENV})")

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message, **exc.extra}, exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: "
                             f"{e.get('msg', 'invalid')}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__}); the server log has the "
                             "details"}, 500)

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS, dependencies=[Depends(authorised)],
              openapi_extra=PREDICT_BODY, summary="Classify one or many images")
    async def predict(request: Request):
        """Multipart form fields `file` (one image) or `files` (several), or JSON `{"images": [base64, ...]}` /
        `{"image": base64}`. Every prediction is logged (with its id) before the response."""
        blobs = await _read_images(request, config.max_images)
        t0 = time.perf_counter()
        route = router.pick()  # this request is served by this version, even if the alias moves meanwhile
        served = route.answer
        prepared = await run_in_threadpool(_prepare, served, blobs, config.max_pixels)
        submitted = time.perf_counter()
        try:
            outputs = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(served, p["input"]))
                                             for p in prepared))
        except BatcherStopped:
            raise ApiError(503, "the server is shutting down; retry") from None
        waited = (time.perf_counter() - submitted) * 1000
        k = max(1, min(config.top_k, len(served.classes)))
        rows, out = [], []
        for blob, p, (probs, embedding) in zip(blobs, prepared, outputs):
            order = np.argsort(-probs)[:k]
            top = [{"class": served.classes[int(i)], "probability": float(probs[i])} for i in order]
            pid, latency = uuid.uuid4().hex, round(p["ms"] + waited, 3)
            rows.append({"id": pid, "request_id": pid, "model": served.name, "version": served.version,
                         "input_sha256": p["sha256"], "brightness": p["brightness"], "colour_mode": p["colour_mode"],
                         "width": p["width"], "height": p["height"], "predicted": top[0]["class"],
                         "confidence": top[0]["probability"], "top_k": top, "latency_ms": latency,
                         "embedding": embedding,
                         "image": blob if config.log_images and len(blob) <= config.image_log_cap_bytes else None})
            out.append({"id": pid, "class": top[0]["class"], "confidence": top[0]["probability"], "top_k": top,
                        "latency_ms": latency, "width": p["width"], "height": p["height"]})
        try:
            await run_in_threadpool(log.log_many, rows)
        except Exception as exc:
            logger.exception("the prediction log refused %d rows", len(rows))
            raise ApiError(503, f"the prediction log cannot be written ({type(exc).__name__}); retry, or check the "
                           "disk holding the workspace") from None
        metrics.predictions.labels(served.name, str(served.version)).inc(len(rows))
        shadow = None
        if route.shadow is not None:  # after the response is sent: the client never waits for the challenger
            shadow = BackgroundTask(_shadow_predict, route.shadow, blobs, rows, config, batcher, log, metrics)
        return JSONResponse({"model": served.name, "version": served.version, "predictions": out,
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}, background=shadow)

    @app.post("/feedback", response_model=FeedbackResponse, responses=ERRORS | {
              404: {"model": ErrorBody, "description": "no prediction with this id in the log"}},
              dependencies=[Depends(authorised)], summary="Record the true label of a prediction")
    async def feedback(body: FeedbackRequest):
        """The label must be one of the classes of the model version that made the prediction (422 lists them)."""
        try:
            return await run_in_threadpool(log.add_feedback, body.prediction_id, body.label, body.comment)
        except UnknownPrediction as exc:
            raise ApiError(404, str(exc)) from None
        except LabelNotInClasses as exc:
            raise ApiError(422, str(exc), classes=list(exc.classes)) from None

    @app.get("/health", response_model=HealthResponse, summary="What is served, and since when")
    async def health():
        served: Served = holder.current
        return {"status": "ok", "model": served.name, "version": served.version, "ref": ref,
                "classes": len(served.classes), "uptime_s": round(time.monotonic() - started, 3),
                "switches": holder.switches, "last_switch_error": holder.last_error, "challenger": router.describe()}

    @app.get("/metrics", dependencies=[Depends(authorised)], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics, endpoints=("/predict", "/feedback", "/health", "/metrics"))
    return app


# ----------------------------------------------------------------------------------------- the work
def _shadow_predict(shadow: Served, blobs: list[bytes], served_rows: list[dict], config: ServeConfig,
                    batcher: MicroBatcher, log: PredictionLog, metrics: Metrics) -> None:
    """The challenger's predictions on a request the champion answered, logged with role "shadow" and the served
    prediction's id as request_id. Never raises: a shadow failure must not touch the served path."""
    try:
        t0 = time.perf_counter()
        prepared = _prepare(shadow, blobs, config.max_pixels)
        outputs = [f.result() for f in batcher.submit_many(shadow, [p["input"] for p in prepared])]
        waited = (time.perf_counter() - t0) * 1000 - sum(p["ms"] for p in prepared)
        k = max(1, min(config.top_k, len(shadow.classes)))
        rows = []
        for served_row, p, (probs, embedding) in zip(served_rows, prepared, outputs):
            order = np.argsort(-probs)[:k]
            top = [{"class": shadow.classes[int(i)], "probability": float(probs[i])} for i in order]
            rows.append({"role": "shadow", "request_id": served_row["id"], "model": shadow.name,
                         "version": shadow.version, "input_sha256": p["sha256"], "width": p["width"],
                         "height": p["height"], "predicted": top[0]["class"], "confidence": top[0]["probability"],
                         "top_k": top, "latency_ms": round(p["ms"] + max(0.0, waited), 3), "embedding": embedding,
                         "brightness": p["brightness"], "colour_mode": p["colour_mode"]})
        log.log_many(rows)
        metrics.predictions.labels(shadow.name, str(shadow.version)).inc(len(rows))
    except Exception:
        logger.exception("the shadow prediction of %s version %s failed", shadow.name, shadow.version)


def _infer(served: Served, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batch function: one ONNX Runtime call for a batch of preprocessed images of one model version."""
    probs, embedding = served.model.probabilities(np.stack(inputs))
    return list(zip(probs, embedding))


async def _read_images(request: Request, max_images: int) -> list[bytes]:
    """The request's image files as bytes: multipart fields file/files, or JSON image/images (base64)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=max_images + 1, max_fields=max_images + 16)
            except StarletteHTTPException as exc:
                raise ApiError(422, f"bad multipart body ({exc.detail}); send at most {max_images} images in "
                               "fields named file or files") from None
            uploads = [v for key in ("file", "files") for v in form.getlist(key)]
            if not uploads:
                others = ", ".join(sorted(set(form.keys()))) or "none"
                raise ApiError(422, f"no image in the form: send it in a field named file (or files for several); "
                               f"fields sent: {others}")
            if len(uploads) > max_images:
                raise ApiError(422, f"too many images: {len(uploads)}; at most {max_images} per request")
            blobs = []
            for i, up in enumerate(uploads):
                if not isinstance(up, UploadFile):
                    raise ApiError(422, f"image {i}: the field holds text, not a file; send the image as a file")
                blobs.append(await up.read())
                await up.close()
        elif ctype == "application/json" or ctype.endswith("+json"):
            blobs = _from_json(await request.body(), max_images)
        elif not ctype and not await request.body():
            raise ApiError(422, "empty request: send images as multipart/form-data (field file or files) or JSON "
                           '{"images": [base64, ...]}')
        else:
            raise ApiError(415, f"unsupported content type {ctype or '(none)'}: send multipart/form-data (field "
                           'file or files) or application/json {"images": [base64, ...]}')
    except ClientDisconnect:  # the body limit cut it off (and has answered 413), or the client left
        raise ApiError(413, "the request body was cut off") from None
    empty = [i for i, b in enumerate(blobs) if not b]
    if empty:
        raise ApiError(422, f"image {empty[0]} is empty (0 bytes)")
    return blobs


def _from_json(body: bytes, max_images: int) -> list[bytes]:
    if not body.strip():
        raise ApiError(422, 'empty request: send JSON {"images": [base64, ...]} or {"image": base64}')
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, f"the body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not ({"image", "images"} & doc.keys()):
        raise ApiError(422, 'send a JSON object {"images": [base64, ...]} or {"image": base64}')
    items = doc["images"] if "images" in doc else [doc["image"]]
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(422, '"images" must be a list of base64 strings')
    if not items:
        raise ApiError(422, 'empty request: "images" is an empty list')
    if len(items) > max_images:
        raise ApiError(422, f"too many images: {len(items)}; at most {max_images} per request")
    out = []
    for i, text in enumerate(items):
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            out.append(base64.b64decode("".join(text.split()), validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(422, f"image {i}: not valid base64; encode the image file's bytes with standard base64")
    return out


_STATUS = {"pixel_bomb": 413, "not_image": 415}


def _prepare(served: Served, blobs: list[bytes], max_pixels: int) -> list[dict[str, Any]]:
    """Decode (the safe loader, pixel limit) and preprocess (the bundle's rule) each image; ApiError on the first
    bad one, naming it."""
    out = []
    for i, blob in enumerate(blobs):
        started = time.perf_counter()
        try:
            rgb = load_rgb(blob, max_pixels=max_pixels)
        except ImageError as exc:
            code = getattr(exc, "code", "corrupt")
            raise ApiError(_STATUS.get(code, 422), f"image {i}: {exc}".replace("<bytes>: ", ""), index=i,
                           code=code) from None
        out.append({"input": served.bundle.preprocess(rgb), "width": rgb.width, "height": rgb.height,
                    "sha256": hashlib.sha256(blob).hexdigest(), "brightness": brightness(rgb),
                    "colour_mode": file_colour_mode(blob), "ms": (time.perf_counter() - started) * 1000})
    return out
