"""The prediction server: predict (multipart, base64), feedback, every bad input a 4xx JSON, metrics, the token, the
OpenAPI document; a real uvicorn on loopback switching versions under concurrent load with no failed request; the
background-process control, and the log of a server killed under load."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import socket
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.cli import serve as serve_cli
from core.deploy import server as server_module
from core.deploy.predlog import PredictionLog
from core.deploy.registry import NotInRegistry, Registry
from core.deploy.server import ServeConfig, create_app
from core.deploy.serving import server_status, start_server, stop_server
from core.errors import StudioError

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def registry(serve_workspace) -> Registry:
    return Registry(os.path.join(serve_workspace, "registry"))


@pytest.fixture(scope="module")
def log(serve_workspace) -> PredictionLog:
    return PredictionLog.for_workspace(serve_workspace)


@pytest.fixture(scope="module")
def client(registry, log):
    config = ServeConfig("digits@champion", max_body_bytes=256 * 1024, max_images=4, max_pixels=100 * 100,
                         poll_seconds=60, token=None)
    with TestClient(create_app(config, registry, log=log)) as c:
        yield c


@pytest.fixture(scope="module")
def png(test_image) -> bytes:
    with open(test_image, "rb") as f:
        return f.read()


def _jpeg(size=(40, 30), colour=(200, 30, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _check_prediction(p: dict, width: int, height: int) -> None:
    assert len(p["id"]) == 32 and p["class"] in CLASSES and 0 < p["confidence"] <= 1
    assert p["top_k"][0]["class"] == p["class"] and len(p["top_k"]) == 5
    assert p["top_k"][0]["probability"] == p["confidence"]
    assert all(a["probability"] >= b["probability"] for a, b in zip(p["top_k"], p["top_k"][1:]))
    assert p["latency_ms"] > 0 and (p["width"], p["height"]) == (width, height)


# ----------------------------------------------------------------------------------------------- in process
def test_predict_multipart_one_and_many_and_every_prediction_is_logged(client, log, png):
    r = client.post("/predict", files={"file": ("three.png", png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "digits" and body["version"] == 1 and body["latency_ms"] > 0
    (p,) = body["predictions"]
    _check_prediction(p, 24, 24)
    row = log.get(p["id"])  # in the log before the response was sent
    assert row["input_sha256"] == hashlib.sha256(png).hexdigest() and row["predicted"] == p["class"]
    assert (row["model"], row["version"], row["width"], row["height"]) == ("digits", 1, 24, 24)
    assert row["embedding"].shape == (row["embedding_dim"],) and np.isfinite(row["embedding"]).all()
    assert row["image"] is None  # image logging is off by default
    jpeg = _jpeg()
    files = [("files", ("a.png", png, "image/png")), ("files", ("b.jpg", jpeg, "image/jpeg"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    first, second = r.json()["predictions"]
    _check_prediction(first, 24, 24)
    _check_prediction(second, 40, 30)
    assert first["class"] == p["class"] and first["confidence"] == pytest.approx(p["confidence"], abs=1e-6)


def test_predict_json_base64(client, png):
    b64 = base64.b64encode(png).decode()
    r = client.post("/predict", json={"images": [b64, "data:image/png;base64," + b64, b64]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3 and len({p["id"] for p in preds}) == 3 and len({p["class"] for p in preds}) == 1
    r = client.post("/predict", json={"image": b64})
    assert r.status_code == 200 and r.json()["predictions"][0]["class"] == preds[0]["class"]


def test_feedback_is_stored_and_checked(client, log, png):
    pid = client.post("/predict", files={"file": ("x.png", png)}).json()["predictions"][0]["id"]
    r = client.post("/feedback", json={"prediction_id": pid, "label": "8", "comment": "an eight"})
    assert r.status_code == 200 and r.json()["label"] == "8" and r.json()["prediction_id"] == pid
    assert [f["label"] for f in log.get(pid)["feedback"]] == ["8"]
    assert log.recent(1)[0]["feedback"]["comment"] == "an eight"
    r = client.post("/feedback", json={"prediction_id": "f" * 32, "label": "8"})
    assert r.status_code == 404 and "no prediction with id" in r.json()["error"]
    r = client.post("/feedback", json={"prediction_id": pid, "label": "cat"})
    assert r.status_code == 422 and r.json()["classes"] == CLASSES and "choose one of: 0, 1" in r.json()["error"]
    r = client.post("/feedback", json={"prediction_id": pid, "label": "8", "comment": "x" * 5000})
    assert r.status_code == 422 and r.json()["error"].startswith("invalid request: comment:")
    r = client.post("/feedback", json={"label": "8"})
    assert r.status_code == 422 and r.json() == {"error": "invalid request: prediction_id: Field required"}
    r = client.post("/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("invalid request")


def _pixel_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (200, 200)).save(buf, "PNG")  # 40,000 pixels: over this server's 10,000
    return buf.getvalue()


_BAD = [  # (what, request kwargs, status, words in the error)
    ("not an image", {"files": {"file": ("a.png", b"hello, not an image", "image/png")}}, 415, "not an image"),
    ("truncated", lambda png: {"files": {"file": ("a.png", png[: len(png) // 2])}}, 422, "image 0:"),
    ("pixel bomb", {"files": {"file": ("big.png", _pixel_bomb())}}, 413, "over the limit of 10000"),
    ("oversize body", {"content": b"x" * (300 * 1024), "headers": {"content-type": "application/json"}}, 413,
     "over the limit of 262144 bytes"),
    ("empty body", {"content": b""}, 422, "empty request"),
    ("empty json", {"json": {"images": []}}, 422, "empty request"),
    ("empty file", {"files": {"file": ("a.png", b"")}}, 422, "empty"),
    ("bad base64", {"json": {"images": ["%%%not-base64%%%"]}}, 422, "not valid base64"),
    ("too many", lambda png: {"json": {"images": [base64.b64encode(png).decode()] * 5}}, 422, "at most 4"),
    ("too many files", lambda png: {"files": [("files", ("a.png", png))] * 6}, 422, "at most 4"),
    ("json not an object", {"json": ["a"]}, 422, '{"images"'),
    ("not json", {"content": b"{oops", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
    ("no file field", {"data": {"comment": "hi"}, "files": {"other": ("a.png", b"x")}}, 422, "field named file"),
    ("wrong type", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
]


@pytest.mark.parametrize("what, kwargs, status, words", _BAD, ids=[b[0] for b in _BAD])
def test_bad_input_gets_a_clear_4xx(client, png, what, kwargs, status, words):
    kwargs = kwargs(png) if callable(kwargs) else kwargs
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"] and "Traceback" not in r.text


def test_a_streamed_body_is_cut_off_at_the_limit(client):
    sent = []

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(64):
            sent.append(1)
            yield b"x" * 16384

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_an_unexpected_error_is_a_short_500_and_the_server_goes_on(registry, log, png, monkeypatch):
    app = create_app(ServeConfig("digits:1", token=None), registry, log=log)
    monkeypatch.setattr(server_module, "_prepare", lambda *a: 1 / 0)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/predict", files={"file": ("a.png", png)})
        assert r.status_code == 500 and r.json() == {
            "error": "internal server error (ZeroDivisionError); the server log has the details"}
        monkeypatch.undo()
        assert c.post("/predict", files={"file": ("a.png", png)}).status_code == 200


def test_image_logging_keeps_the_images_under_the_cap_in_the_workspace_log(registry, serve_workspace, png):
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noise, "PNG")
    config = ServeConfig("digits:1", log_images=True, image_log_cap_bytes=len(png), token=None)
    with TestClient(create_app(config, registry)) as c:  # no log given: the workspace's, beside its registry
        r = c.post("/predict", files=[("files", ("small.png", png)), ("files", ("big.png", noise.getvalue()))])
    small, big = (p["id"] for p in r.json()["predictions"])
    log = PredictionLog.for_workspace(serve_workspace)
    assert log.get(small)["image"] == png and log.get(big)["image"] is None


def test_metrics_count_requests_errors_versions_and_batches(client, png):
    client.post("/predict", files={"file": ("a.png", png)})
    client.post("/predict", content=b"", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    for needle in ('studio_requests_total{endpoint="/predict",status="200"}',
                   'studio_requests_total{endpoint="/predict",status="422"}',
                   'studio_errors_total{endpoint="/predict"}',
                   'studio_request_latency_seconds_bucket{endpoint="/predict",le="0.5"}',
                   'studio_predictions_total{model="digits",version="1"}', "studio_batch_size_bucket{le=\"4.0\"}",
                   'studio_served_version{model="digits"} 1.0'):
        assert needle in text, needle


def test_the_token_guards_predict_feedback_and_metrics_not_health(registry, log, png):
    app = create_app(ServeConfig("digits:1", token="s3cret-token"), registry, log=log)
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            r = c.post("/predict", files={"file": ("a.png", png)}, headers=headers)
            assert r.status_code == 401 and "API token" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/feedback", json={"prediction_id": "x", "label": "1"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/health").status_code == 200
        auth = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/predict", files={"file": ("a.png", png)}, headers=auth).status_code == 200
        assert c.get("/metrics", headers=auth).status_code == 200


def test_health_and_the_openapi_document(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "digits" and health["version"] == 1
    assert health["classes"] == 10 and health["uptime_s"] >= 0 and health["ref"] == "digits@champion"
    doc = client.get("/openapi.json").json()
    predict = doc["paths"]["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictResponse")
    assert {"401", "413", "415", "422"} <= set(predict["responses"])
    assert "class" in doc["components"]["schemas"]["Prediction"]["properties"]
    assert "404" in doc["paths"]["/feedback"]["post"]["responses"]
    assert "/health" in doc["paths"] and "/metrics" in doc["paths"]
    assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_a_bad_ref_is_refused_before_serving(registry, log):
    with pytest.raises(NotInRegistry, match="no alias 'nope'"):
        create_app(ServeConfig("digits@nope"), registry, log=log)
    with pytest.raises(StudioError):
        create_app(ServeConfig("nosuchmodel"), registry, log=log)


def test_the_cli_refuses_a_public_address_without_a_token_and_a_bad_ref(serve_workspace, monkeypatch, capsys):
    monkeypatch.delenv(server_module.TOKEN_ENV, raising=False)
    assert serve_cli.main(["digits", "--host", "0.0.0.0", "--workspace", serve_workspace]) == 2
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err
    assert serve_cli.main(["digits@nope", "--workspace", serve_workspace]) == 2
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["error"].startswith("model 'digits' has no alias")
    assert serve_cli.is_loopback("127.0.0.1") and serve_cli.is_loopback("::1") and serve_cli.is_loopback("localhost")
    assert not serve_cli.is_loopback("0.0.0.0") and not serve_cli.is_loopback("192.168.1.4")


# ----------------------------------------------------------------------------------------------- real uvicorn
@pytest.fixture(scope="module")
def live(registry, log):
    """A real uvicorn on a free loopback port (in a thread) serving digits@canary, polled every 50 ms."""
    import uvicorn

    registry.set_alias("digits", "canary", 1)
    app = create_app(ServeConfig("digits@canary", poll_seconds=0.05, max_wait_ms=2, token=None), registry, log=log)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield url, app
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_real_server_predicts_and_cuts_off_a_streamed_oversize_body(live, png):
    url, _ = live
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
        r = http.post("/predict", files={"file": ("a.png", png)})
        assert r.status_code == 200 and r.json()["version"] == 1
        big = (b"x" * 65536 for _ in range(400))  # 25 MiB, chunked (no Content-Length); the limit is 20 MiB
        r = http.post("/predict", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        r = http.post("/predict", content=b"x" * (21 * 1024**2), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        assert http.get("/health").status_code == 200  # still serving


def test_hot_switch_under_concurrent_load_fails_no_request(live, registry, png):
    url, app = live
    results, stop = [], threading.Event()
    jpeg = _jpeg((64, 48))

    def hammer():
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
            while not stop.is_set():
                r = http.post("/predict", files=[("files", ("a.png", png)), ("files", ("b.jpg", jpeg))])
                results.append((r.status_code, r.json().get("version"), len(r.json().get("predictions", []))))

    clients = [threading.Thread(target=hammer) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        for version in (2, 1, 2, 1):
            time.sleep(0.4)
            registry.set_alias("digits", "canary", version, reason="test switch")
            deadline = time.monotonic() + 10
            while app.state.holder.current.version != version and time.monotonic() < deadline:
                time.sleep(0.01)
            assert app.state.holder.current.version == version
    finally:
        time.sleep(0.3)
        stop.set()
        for t in clients:
            t.join(30)
    assert len(results) >= 20
    assert all(status == 200 and n == 2 for status, _, n in results), [r for r in results if r[0] != 200][:3]
    assert {v for _, v, _ in results} == {1, 2}
    assert app.state.holder.switches == 4 and app.state.holder.last_error is None


# ----------------------------------------------------------------------------------------------- background process
def test_background_server_killed_under_load_leaves_every_answered_prediction_in_the_log(tmp_path, registry, png):
    workspace = str(tmp_path / "ws")
    os.makedirs(workspace)
    os.symlink(registry.root, os.path.join(workspace, "registry"))
    state = start_server(workspace, "digits:2", extra_args=["--max-wait-ms", "2"])
    assert state["healthy"] and server_status(workspace)["health"]["version"] == 2
    answered, stop = [], threading.Event()

    def hammer():
        with httpx.Client(base_url=state["url"], timeout=5, trust_env=False) as http:
            while not stop.is_set():
                try:
                    r = http.post("/predict", files=[("files", ("a.png", png))] * 3)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    answered.extend(p["id"] for p in r.json()["predictions"])

    clients = [threading.Thread(target=hammer) for _ in range(4)]
    for t in clients:
        t.start()
    time.sleep(1.5)
    os.kill(state["pid"], signal.SIGKILL)
    time.sleep(0.3)
    stop.set()
    for t in clients:
        t.join(10)
    assert not server_status(workspace)["running"]
    path = os.path.join(workspace, "serving", "predictions.db")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT * FROM predictions").fetchall()
    assert len(answered) >= 3 and len(rows) >= len(answered) and len(rows) % 3 == 0  # whole requests only
    assert all(v is not None for row in rows for v in row[:13])
    assert set(answered) <= {row[0] for row in rows}
    assert PredictionLog(path).embeddings().shape[0] == len(rows)
    # and the dashboard's controls: start again, stop gracefully
    state = start_server(workspace, "digits:1")
    assert server_status(workspace)["healthy"]
    assert stop_server(workspace) and not server_status(workspace)["running"]
    assert not stop_server(workspace)
