"""A challenger beside the served model: shadow mode logs both versions' predictions (only the champion answers),
A/B answers a share of requests with the challenger, the same version twice compares nothing, and a log from before
these columns existed is upgraded in place."""
from __future__ import annotations

import os
import sqlite3
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from core.cli import serve as serve_cli
from core.deploy.predlog import PredictionLog
from core.deploy.registry import Registry
from core.deploy.server import ServeConfig, create_app
from core.deploy.shadow import Router


@pytest.fixture(scope="module")
def registry(serve_workspace) -> Registry:
    registry = Registry(os.path.join(serve_workspace, "registry"))
    registry.set_alias("digits", "rival", 2)  # this module's own alias: champion -> 1, rival -> 2
    return registry


@pytest.fixture()
def log(tmp_path) -> PredictionLog:
    log = PredictionLog(str(tmp_path / "predictions.db"))
    yield log
    log.close()


@pytest.fixture(scope="module")
def png(test_image) -> bytes:
    with open(test_image, "rb") as f:
        return f.read()


def _app(registry, log, **kwargs):
    config = ServeConfig("digits@champion", poll_seconds=60, token=None, challenger="digits@rival", **kwargs)
    return TestClient(create_app(config, registry, log=log))


def test_shadow_logs_the_challenger_beside_every_served_prediction(registry, log, png):
    with _app(registry, log) as client:
        assert client.get("/health").json()["challenger"] == {"ref": "digits@rival", "version": 2, "mode": "shadow",
                                                              "share": None, "active": True}
        answers = [client.post("/predict", files=[("files", ("a.png", png)), ("files", ("b.png", png))]).json()
                   for _ in range(3)]
    assert {a["version"] for a in answers} == {1}  # only the champion answers
    served = {p["id"] for a in answers for p in a["predictions"]}
    rows = log.query("SELECT id, version, role, request_id, predicted FROM predictions")
    shadows = [r for r in rows if r["role"] == "shadow"]
    assert len(rows) == 12 and len(shadows) == 6
    assert {r["version"] for r in shadows} == {2}
    assert {r["request_id"] for r in shadows} == served  # each shadow row points at the prediction it shadows
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[r["request_id"]]["predicted"] == r["predicted"] for r in shadows)  # the same bundle twice
    # what clients got, by default: the served rows only
    assert {r["id"] for r in log.recent(50)} == served
    assert log.embeddings("digits").shape[0] == 6 and log.embeddings("digits", role=None).shape[0] == 12


def test_ab_answers_the_share_given_with_the_challenger(registry, log, png):
    with _app(registry, log, challenger_mode="ab", ab_share=1.0) as client:
        assert {client.post("/predict", files={"file": ("a.png", png)}).json()["version"] for _ in range(3)} == {2}
    with _app(registry, log, challenger_mode="ab", ab_share=0.0) as client:
        assert {client.post("/predict", files={"file": ("a.png", png)}).json()["version"] for _ in range(3)} == {1}
    rows = log.query("SELECT version, role FROM predictions")
    assert sorted(r["version"] for r in rows) == [1, 1, 1, 2, 2, 2] and {r["role"] for r in rows} == {"served"}


def test_router_share_and_same_version():
    one, two = (SimpleNamespace(name="m", version=v) for v in (1, 2))
    champion, challenger = SimpleNamespace(current=one, ref="m"), SimpleNamespace(current=two, ref="m@challenger")
    router = Router(champion, challenger, "ab", share=0.25, seed=0)
    arms = [router.pick().arm for _ in range(4000)]
    assert 0.22 < arms.count("challenger") / len(arms) < 0.28
    challenger.current = one  # promoted: both name version 1, nothing to compare
    assert Router(champion, challenger, "shadow").pick().shadow is None
    assert Router(champion, challenger, "ab", share=1.0).pick().arm == "champion"
    with pytest.raises(ValueError, match="between 0 and 1"):
        Router(champion, challenger, "ab", share=1.5)
    with pytest.raises(ValueError, match="shadow, ab"):
        Router(champion, challenger, "canary")


def test_serve_cli_refuses_a_bad_share(capsys):
    assert serve_cli.main(["digits", "--challenger", "digits@challenger", "--mode", "ab", "--ab-share", "2"]) == 2
    assert "--ab-share 2" in capsys.readouterr().err


def test_a_log_from_before_roles_is_upgraded_in_place(tmp_path):
    path = str(tmp_path / "old.db")
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE predictions (id TEXT PRIMARY KEY, at REAL NOT NULL, model TEXT NOT NULL, version "
                "INTEGER NOT NULL, input_sha256 TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, "
                "predicted TEXT NOT NULL, confidence REAL NOT NULL, top_k TEXT NOT NULL, latency_ms REAL NOT NULL, "
                "embedding BLOB NOT NULL, embedding_dim INTEGER NOT NULL, image BLOB)")
    con.execute("INSERT INTO predictions VALUES ('old', 1.0, 'm', 1, 'x', 4, 4, 'a', 0.9, '[]', 1.0, x'0000', 1, "
                "NULL)")
    con.commit()
    con.close()
    log = PredictionLog(path)
    try:
        assert [dict(r) for r in log.query("SELECT id, role, request_id FROM predictions")] == [
            {"id": "old", "role": "served", "request_id": None}]
        with pytest.raises(Exception, match="SELECT"):
            log.query("DELETE FROM predictions")
    finally:
        log.close()
