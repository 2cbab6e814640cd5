"""The prediction server's HTTP plumbing: the API's shapes (pydantic models, so /docs and /openapi.json are
accurate), ApiError (a refusal as a 4xx JSON {"error": ...}), its Prometheus metrics (one CollectorRegistry per
app) and two pure ASGI middlewares: the body limit, enforced while the body streams in, and the request counter.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """A request the server refuses: its HTTP status and the message (plus fields) of the JSON body."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


# ----------------------------------------------------------------------------------------- the API's shapes
class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and what to do")


class TopK(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: str = Field(description="the prediction's id in the log: give it to /feedback")
    class_: str = Field(alias="class", description="the predicted class")
    confidence: float = Field(description="its softmax probability")
    top_k: list[TopK]
    latency_ms: float = Field(description="this image: decode, preprocess, wait for its batch, inference")
    width: int = Field(description="the decoded image's width (EXIF orientation applied)")
    height: int


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction] = Field(description="one per image, in the order sent")
    latency_ms: float = Field(description="the whole request, from its body read to the response")


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(description="an id a /predict response returned", max_length=64)
    label: str = Field(description="the true class: one of the model's classes", max_length=512)
    comment: str = Field("", description="why, or anything worth keeping with it", max_length=4000)


class FeedbackResponse(BaseModel):
    id: str
    prediction_id: str
    label: str
    comment: str
    at: float = Field(description="unix seconds, UTC")
    at_iso: str


class HealthResponse(BaseModel):
    status: str = Field(description='"ok"')
    model: str
    version: int
    ref: str
    classes: int = Field(description="how many classes the model has")
    uptime_s: float
    switches: int = Field(description="hot switches to another version since the start")
    last_switch_error: str | None = None
    challenger: dict[str, Any] | None = Field(default=None, description="the version beside the served one: ref, "
                                              "version, mode (shadow | ab), share (ab), active")


_IMAGE_B64 = {"type": "string", "description": "an image file (PNG, JPEG, BMP, GIF, TIFF, WEBP) in base64; a "
              "data: URL prefix is accepted"}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary", "description": "one image"},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "several"}}}},
    "application/json": {"schema": {"type": "object", "properties": {
        "image": _IMAGE_B64, "images": {"type": "array", "items": _IMAGE_B64}}}}}}}
ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (401, "a token is required (Authorization: Bearer ...) and this one is missing or wrong"),
    (413, "the body is over the limit, or an image has more pixels than allowed"),
    (415, "not an image, or a body that is neither multipart/form-data nor JSON"),
    (422, "an empty request, bad base64, too many images, a corrupt image, or a bad field"))}


# ----------------------------------------------------------------------------------------- metrics
class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("studio_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("studio_errors", "requests answered 4xx or 5xx, by endpoint", ["endpoint"], registry=r)
        self.latency = Histogram("studio_request_latency_seconds", "request latency", ["endpoint"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.predictions = Counter("studio_predictions", "images classified, by model and version",
                                   ["model", "version"], registry=r)
        self.batch_size = Histogram("studio_batch_size", "images per ONNX Runtime call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.served = Gauge("studio_served_version", "the version being served", ["model"], registry=r)
        self.switches = Counter("studio_model_switches", "hot switches to another version", registry=r)


class Observe:
    """Pure ASGI middleware: counts every HTTP response by endpoint and status, and times it."""

    def __init__(self, app, metrics: Metrics, endpoints: tuple[str, ...]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        started, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(endpoint).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class BodyLimit:
    """Pure ASGI middleware: a body over `limit` bytes is answered 413 once its Content-Length says so, or once the
    bytes received pass it; the app then sees a disconnect. Nothing over the limit is kept: the rest of the body
    is read and dropped (up to `drain_bytes` more, for at most `drain_s`) before the answer, because closing a
    socket with unread data resets it and the client would lose the 413. A client that sent `Expect: 100-continue`
    is answered before it sends anything."""

    def __init__(self, app, limit: int, drain_bytes: int = 64 * 1024**2, drain_s: float = 5.0):
        self.app, self.limit, self.drain_bytes, self.drain_s = app, limit, drain_bytes, drain_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = {"error": f"the request body is over the limit of {self.limit} bytes; send fewer or smaller "
                   "images, or start the server with a larger --max-body-mb"}
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if b"100-continue" not in headers.get(b"expect", b"").lower() and int(declared) <= self.drain_bytes:
                await self._drain(receive)
            return await _send_json(send, 413, message)
        received, replied = 0, False

        async def limited_receive():
            nonlocal received, replied
            if replied:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    replied = True
                    if msg.get("more_body"):
                        await self._drain(receive)
                    await _send_json(send, 413, message)
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg):
            if not replied:
                await send(msg)

        await self.app(scope, limited_receive, guarded_send)

    async def _drain(self, receive) -> None:
        """Read and drop the rest of the body, within the byte and time bounds."""
        dropped, deadline = 0, time.monotonic() + self.drain_s
        while dropped <= self.drain_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                return
            if msg["type"] != "http.request":
                return
            dropped += len(msg.get("body", b""))
            if not msg.get("more_body"):
                return


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
