"""The alert store: one open alert per model and kind, updated rather than duplicated, closed with why."""
import threading

import numpy as np
import pytest

from core.errors import StudioError
from core.monitor.alerts import AlertError, AlertStore


def test_one_open_alert_per_model_and_kind_updated_not_duplicated(tmp_path):
    store = AlertStore(str(tmp_path))
    first = store.raise_or_update("cats", "accuracy", "accuracy is 70%", {"accuracy": 0.7, "n": np.int64(40)})
    again = store.raise_or_update("cats", "accuracy", "accuracy is 65%", {"accuracy": 0.65})
    other = store.raise_or_update("cats", "drift", "embeddings drifted", {"auc": 0.9})
    store.raise_or_update("dogs", "accuracy", "accuracy is 50%")
    assert again.id == first.id and again.reason == "accuracy is 65%" and again.details == {"accuracy": 0.65}
    assert first.details["n"] == 40 and again.opened_at == first.opened_at and again.updated_at >= first.updated_at
    assert [a.kind for a in store.open_alerts("cats")] == ["accuracy", "drift"]
    assert other.is_open and len(store.open_alerts("dogs")) == 1
    assert (tmp_path / "monitor" / "monitor.db").exists()


def test_close_then_raise_opens_a_new_alert_and_history_keeps_both(tmp_path):
    store = AlertStore(str(tmp_path))
    first = store.raise_or_update("cats", "latency", "p99 is 900 ms")
    closed = store.close("cats", "latency", "p99 back to 40 ms")
    assert closed.id == first.id and closed.closed_at is not None and closed.closed_why == "p99 back to 40 ms"
    assert store.close("cats", "latency", "nothing open") is None
    assert store.open_alerts("cats") == []
    second = store.raise_or_update("cats", "latency", "p99 is 1200 ms")
    assert second.id != first.id
    history = store.history("cats", 10)
    assert [a.id for a in history] == [second.id, first.id] and history[1].closed_at is not None
    assert len(store.history("cats", 1)) == 1
    # a second store on the same workspace (another process) sees the same alerts
    assert [a.id for a in AlertStore(str(tmp_path)).open_alerts("cats")] == [second.id]


def test_racing_checks_open_one_alert(tmp_path):
    store = AlertStore(str(tmp_path))
    threads = [threading.Thread(target=store.raise_or_update, args=("cats", "drift", f"drift {i}"))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.open_alerts("cats")) == 1 and len(store.history("cats")) == 1


def test_unknown_kind_and_empty_reason_are_refused(tmp_path):
    store = AlertStore(str(tmp_path))
    with pytest.raises(AlertError, match="choose one of: accuracy, drift, confidence, latency"):
        store.raise_or_update("cats", "weather", "rain")
    with pytest.raises(StudioError):
        store.raise_or_update("cats", "drift", "  ")
    with pytest.raises(ValueError):
        store.close("cats", "weather", "why")
