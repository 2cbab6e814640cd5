"""The prediction log: rows in and out whole, feedback checked, embeddings compact, a SIGKILL leaves it intact."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from core.deploy.predlog import LabelNotInClasses, PredictionLog, PredictionLogError, UnknownPrediction
from core.errors import StudioError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _row(i: int = 0, model: str = "digits", version: int = 1, dim: int = 8, **extra) -> dict:
    return {"model": model, "version": version, "input_sha256": f"{i:064x}", "width": 24, "height": 20,
            "predicted": "3", "confidence": 0.7, "top_k": [["3", 0.7], ["8", 0.2]], "latency_ms": 4.5,
            "embedding": np.linspace(-1, 1, dim) + i, **extra}


def test_rows_round_trip_with_compact_embeddings(tmp_path):
    log = PredictionLog(str(tmp_path / "serving"))
    assert log.path.endswith(os.path.join("serving", "predictions.db"))
    ids = log.log_many([_row(i) for i in range(3)])
    assert len(set(ids)) == 3 and log.count() == 3
    got = log.get(ids[1])
    assert got["model"] == "digits" and got["version"] == 1 and got["width"] == 24 and got["height"] == 20
    assert got["top_k"] == [{"class": "3", "probability": 0.7}, {"class": "8", "probability": 0.2}]
    assert got["embedding"].dtype == np.float32 and got["embedding"].shape == (8,)
    np.testing.assert_allclose(got["embedding"], np.linspace(-1, 1, 8) + 1, atol=2e-3)  # float16
    assert got["image"] is None and got["feedback"] == []
    blob = sqlite3.connect(log.path).execute("SELECT embedding FROM predictions LIMIT 1").fetchone()[0]
    assert len(blob) == 8 * 2
    assert log.get("nope") is None
    mode = sqlite3.connect(log.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_images_kept_only_under_the_cap(tmp_path):
    log = PredictionLog(str(tmp_path / "p.db"), image_cap_bytes=100)
    small, big = log.log_many([_row(0, image=b"x" * 50), _row(1, image=b"y" * 101)])
    assert log.get(small)["image"] == b"x" * 50
    assert log.get(big)["image"] is None
    assert [r["has_image"] for r in log.recent(5)] == [False, True]


def test_malformed_rows_are_refused_and_nothing_is_written(tmp_path):
    log = PredictionLog(str(tmp_path / "p.db"))
    bad = _row(1)
    del bad["predicted"]
    with pytest.raises(PredictionLogError, match="predicted"):
        log.log_many([_row(0), bad])
    with pytest.raises(PredictionLogError):
        log.log_many([_row(0, top_k=[["3"]])])
    assert log.count() == 0


def test_feedback_is_checked_and_joined(tmp_path):
    log = PredictionLog(str(tmp_path / "p.db"))
    log.set_classes("digits", 1, [str(i) for i in range(10)])
    first, second = log.log_many([_row(0), _row(1)])
    with pytest.raises(UnknownPrediction) as unknown:
        log.add_feedback("0" * 32, "3")
    assert isinstance(unknown.value, StudioError) and isinstance(unknown.value, KeyError)
    assert "no prediction with id" in str(unknown.value)
    with pytest.raises(LabelNotInClasses) as bad:
        log.add_feedback(first, "cat")
    assert isinstance(bad.value, ValueError) and "choose one of: 0, 1" in str(bad.value)
    assert bad.value.classes[:2] == ("0", "1")
    fb = log.add_feedback(first, "8", "looks like an eight")
    assert fb["prediction_id"] == first and fb["label"] == "8" and fb["comment"] == "looks like an eight"
    time.sleep(0.002)
    log.add_feedback(first, "5")
    recent = log.recent(10)
    assert [r["id"] for r in recent] == [second, first]  # newest first
    assert recent[0]["feedback"] is None and recent[1]["feedback"]["label"] == "5"  # the latest one
    assert [f["label"] for f in log.get(first)["feedback"]] == ["8", "5"]
    assert "feedback" not in log.recent(10, with_feedback=False)[0]
    # a second log object (the dashboard's) reads the classes from the database
    assert PredictionLog(log.path).classes("digits", 1)[3] == "3"
    assert PredictionLog(log.path).classes("digits", 2) is None


def test_embeddings_by_model_and_time(tmp_path):
    log = PredictionLog(str(tmp_path / "p.db"))
    assert log.embeddings().shape == (0, 0)
    log.log_many([_row(i, at=1000.0 + i) for i in range(4)] + [_row(9, model="other", at=2000.0)])
    assert log.embeddings().shape == (5, 8)
    assert log.embeddings(model="digits").shape == (4, 8)
    assert log.embeddings(model="digits", since=1002.0).shape == (2, 8)
    assert log.embeddings(model="digits", version=2).shape == (0, 0)


def test_threads_each_write_through_their_own_connection(tmp_path):
    log = PredictionLog(str(tmp_path / "p.db"))
    errors = []

    def write(k):
        try:
            for j in range(10):
                log.log_many([_row(k * 100 + j), _row(k * 100 + j + 50)])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and log.count() == 80
    log.close()


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from core.deploy.predlog import PredictionLog
    log = PredictionLog({path!r}, image_cap_bytes=1 << 20)
    log.set_classes("digits", 1, list("0123456789"))
    i = 0
    while True:
        rows = [dict(model="digits", version=1, input_sha256="%064x" % (i + k), width=224, height=224,
                     predicted="3", confidence=0.5, top_k=[["3", 0.5], ["1", 0.25]], latency_ms=1.0,
                     embedding=np.full(1280, 0.5, dtype=np.float32), image=b"z" * 20000) for k in range(16)]
        log.log_many(rows)
        i += 16
        if i == 64:
            print("writing", flush=True)
""")


def test_a_killed_writer_leaves_the_log_readable_with_whole_rows(tmp_path):
    path = str(tmp_path / "serving" / "predictions.db")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(root=ROOT, path=path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.5)  # mid-way through some transaction
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, at, model, version, input_sha256, width, height, predicted, confidence, top_k, "
                        "latency_ms, embedding, embedding_dim, image, role FROM predictions").fetchall()
    assert len(rows) >= 64 and len(rows) % 16 == 0  # whole batches only
    for row in rows:
        assert all(v is not None for v in row)
        assert json.loads(row[9])[0] == ["3", 0.5]
        assert len(row[11]) == row[12] * 2 == 2560 and len(row[13]) == 20000
    log = PredictionLog(path)
    assert log.count() == len(rows) and log.embeddings().shape == (len(rows), 1280)
    assert log.add_feedback(rows[0][0], "7")["label"] == "7"
