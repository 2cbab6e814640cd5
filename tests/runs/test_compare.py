from core.runs.compare import config_table, epoch_curves, flat_config, run_table, status_of
from core.config import TrainConfig
from core.runs.store import RunStore


def make_run(store: RunStore, status: str, **config) -> str:
    run_id = store.create_run(TrainConfig(**config).to_dict(), {"source": "/data/x", "dataset_id": "abc",
                                                                "classes": ["a", "b"]})
    for epoch, acc in enumerate((0.5, 0.7, 0.6)):
        store.log_metrics(run_id, "epoch", epoch, epoch * 10, {"val_loss": 1 - acc, "val_accuracy": acc})
    summary = {"metrics": {"test_accuracy": 0.65}, "baseline": {"test_accuracy": 0.55}, "seconds": 12.0}
    store.update_run(run_id, status=status, summary=summary if status == "completed" else {})
    return run_id


def test_the_run_table_has_one_row_per_run_with_its_best_scores(tmp_path):
    store = RunStore(str(tmp_path))
    done = make_run(store, "completed", lr=1e-3)
    lost = make_run(store, "running", lr=3e-4)
    live = make_run(store, "running", lr=3e-4)
    table = run_table(store, active_ids=[live], names={"abc": "digits"}).set_index("run")
    assert table.status.to_dict() == {done: "completed", lost: "interrupted", live: "running"}
    assert table.loc[done, "best_val_accuracy"] == 0.7 and table.loc[done, "test_accuracy"] == 0.65
    assert table.loc[done, "baseline_test_accuracy"] == 0.55 and table.loc[done, "data"] == "digits"
    assert table.loc[done, "epochs"] == "2/10" and table.loc[lost, "classes"] == 2
    assert status_of({"id": "x", "status": "failed"}, []) == "failed"


def test_configs_are_compared_field_by_field(tmp_path):
    store = RunStore(str(tmp_path))
    a = make_run(store, "completed", lr=1e-3)
    b = make_run(store, "completed", lr=3e-4, image_size=64)
    diff = config_table(store, [a, b])
    assert set(diff.index) == {"lr", "image_size"} and diff.loc["image_size", a] == "default"
    assert len(config_table(store, [a, b], only_differences=False)) == len(flat_config(TrainConfig().to_dict()))
    curves = epoch_curves(store, [a, b], metrics=("val_accuracy",))
    assert len(curves) == 6 and set(curves.run) == {a, b} and curves.value.max() == 0.7
