from core.runs.curves import run_curves, steps_per_epoch


def test_steps_and_epochs_share_one_epoch_axis():
    epochs = [{"epoch": 0, "val_loss": 1.0, "val_accuracy": 0.5},
              {"epoch": 1, "train_loss": 0.8, "train_accuracy": 0.6, "val_loss": 0.7, "val_accuracy": 0.7,
               "val_macro_f1": 0.65}]
    steps = [{"step": s, "epoch": 0, "loss": 1.0 - s / 10, "lr_head": 1e-3, "lr_group15": 8e-4} for s in (1, 2, 3, 4)]
    steps.append({"step": 2, "epoch": 0, "val_loss": 0.9, "val_accuracy": 0.6})  # mid-epoch validation
    curves = run_curves(epochs, steps, {"val_accuracy": 0.55}, total_steps=8, total_epochs=2)
    assert curves.x_label == "epoch"
    batch = curves.loss[curves.loss.series == "train loss (batch)"]
    assert batch.x.tolist() == [0.25, 0.5, 0.75, 1.0]
    val = curves.loss[curves.loss.series == "val loss"]
    assert val.x.tolist() == [0.0, 0.5, 1.0] and val.value.tolist() == [1.0, 0.9, 0.7]
    assert set(curves.scores.series) == {"train accuracy", "val accuracy", "val macro F1"}
    assert list(dict.fromkeys(curves.lrs.series)) == ["head", "group15"] and curves.baseline == {"val_accuracy": 0.55}


def test_stored_runs_place_steps_by_the_step_their_epochs_ended_at():
    assert steps_per_epoch([{"epoch": 0, "step": 0}, {"epoch": 2, "step": 20}]) == 10
    assert steps_per_epoch([{"epoch": 0, "step": 0}]) is None
    curves = run_curves([{"epoch": 0, "step": 0, "val_loss": 1.0}], [{"step": 3, "epoch": 0, "loss": 2.0}])
    assert curves.x_label == "step" and sorted(curves.loss.x.tolist()) == [0, 3]
    assert run_curves([], []).empty
