"""4 · Train: start and stop a run, and watch it live. The run trains on a background thread owned by the
process-wide JobManager; this page only reads its snapshots, so a reload or a second tab shows the same
job, and nothing here restarts it."""
import streamlit as st

from core import sessions
from core.plan import format_bytes, format_seconds
from core.runs import gradient_frame, snapshot_curves, steps_per_epoch
from core.runtime import default_device
from core.train import adaptation_summary, advise_run
from pages import charts, ui

ui.through_app(__file__)

st.title("4 · Train")
manager = ui.job_manager()
me = ui.user()
visible = [r["id"] for r in manager.visible_runs(me)]  # a user watches their own runs; an admin anyone's
active = [j for j in manager.active_jobs() if j.run_id in visible]

# --- the run to watch: this tab's when it trains or was asked for (a link, "Watch it"), else the one training now
# (another tab's), else this tab's last one, else the latest
run_id = st.session_state.get(ui.RUN)
asked = run_id is not None and st.session_state.get(ui.RUN_ASKED) == run_id
if run_id not in visible or (not manager.is_active(run_id) and active and not asked):
    run_id = active[0].run_id if active else next(iter(visible), None)
    if run_id is not None:
        st.session_state[ui.RUN] = run_id
run_record = (ui.attempt("Reading the run", manager.store.get_run, run_id) or {}) if run_id else {}
if not st.session_state.get(ui.DATASET) and run_record.get("dataset_id") and \
        sessions.dataset_visible(ui.workspace().root, me, run_record["dataset_id"]):
    st.session_state[ui.DATASET] = run_record["dataset_id"]  # a tab that never chose one: the watched run's
config = ui.current_config()
overview = ui.current_overview()


def estimate_caption(estimate, timing) -> None:
    if timing is not None:
        st.caption(ui.timing_caption(timing))
    if estimate and estimate.total_seconds is not None:
        st.caption(f"Estimated: about {format_seconds(estimate.total_seconds)} at most "
                   f"({format_seconds(estimate.seconds_per_epoch)} per epoch) on {ui.device_label()}, "
                   f"{format_bytes(estimate.training_memory_bytes)} of training memory.")
    if estimate and estimate.slow:
        st.warning("That is a long run for this machine: a smaller image size or fewer epochs (Configure page) "
                   "gives a first result much sooner.")


# --- what will be trained, and the start button
with st.container(border=True):
    if overview is None:
        st.warning("No dataset yet: load one on the Dataset page (the demo data works).")
        st.page_link("pages/dataset.py", label="Load a dataset", icon=ui.PAGES["pages/dataset.py"].icon)
    else:
        epochs = f"{config.epochs} epoch" + ("s" if config.epochs > 1 else "")
        st.markdown(f"**{ui.md_escape(config.model)}** on **{ui.md_escape(overview.name)}** "
                    f"({overview.report.num_images:,} images, "
                    f"{len(overview.report.class_counts)} classes) · image size "
                    f"{config.image_size or 'the model’s own'} · {epochs} · batch {config.batch_size} · "
                    f"freeze {config.freeze_ratio:.0%} · lr {config.lr:g}"
                    + (f" · {config.unfreeze_stages} unfreezing stages" if config.unfreeze_stages else "")
                    + (" · **your own weights**" if config.checkpoint_path else ""))
        ui.show_estimate(config, overview, estimate_caption)
        if ui.CONFIG not in st.session_state:
            st.info("These are the default settings. The Configure page suggests settings for your data.")
        st.page_link("pages/configure.py", label="Change the settings", icon=ui.PAGES["pages/configure.py"].icon)
    blocked = overview is not None and overview.report.blocks_training
    if blocked:
        st.error("The dataset audit found errors (see the Dataset page); training on it would give misleading "
                 "scores. Fix the data, or train anyway.")
        blocked = not st.checkbox("Train anyway")
    refusal = ui.policy().training_refusal()
    if refusal:
        st.warning(refusal)
    alongside = ui.may_start_another("train.alongside")  # a second run at once is a deliberate choice
    if st.button("Start training", type="primary",
                 disabled=overview is None or blocked or bool(refusal) or not alongside):
        run_id = ui.attempt("Starting the run", lambda: manager.start(config.validate(), overview.dataset.root,
                                                                      owner=me.name))
        if run_id:
            st.session_state[ui.RUN] = run_id
            st.session_state.pop("train.alongside", None)  # the next one is a choice again
            st.rerun()

if run_id is None:
    st.info("No run yet: press **Start training**.")
    ui.stop_page()
polling = manager.is_active(run_id)
run_config, run_counts = run_record.get("config", {}), run_record.get("data", {}).get("train_class_counts", {})
run_dataset = ui.dataset_name(ui.workspace().root, run_record["dataset_id"]) if run_record.get("dataset_id") \
    else run_record.get("data_source", "")
run_name = run_record.get("name") or run_id


# seconds between redraws. Each redraw costs the server CPU: on a 2-core CPU, redrawing status every second
# and charts every 3 s made training 2.4-2.6x slower (`python benchmarks/bench_watched.py`), so on a CPU the
# page redraws less often; a GPU run leaves the CPU free for it.
STATUS_EVERY, CHARTS_EVERY = (1.0, 3.0) if default_device() != "cpu" else (3.0, 15.0)


@st.fragment(run_every=STATUS_EVERY if polling else None)
def status_view() -> None:
    """Progress, stop, stage and outcome: every second while the job runs; a full rerun when it ends."""
    snap = ui.attempt("Reading the run", manager.snapshot, run_id)
    if snap is None:
        return
    st.subheader(f"Run {run_id}: {snap.status.replace('_', ' ')}")
    st.caption((f"**{ui.md_escape(run_name)}** · " if run_name != run_id else "")
               + f"{ui.md_escape(run_record.get('model', ''))} on {ui.md_escape(run_dataset)}")
    if snap.active:
        if snap.total_steps and snap.step:
            text = (f"epoch {min(snap.epoch + 1, snap.total_epochs)}/{snap.total_epochs} · step {snap.step}/"
                    f"{snap.total_steps} · {snap.images_per_s:.0f} images/s · ETA {format_seconds(snap.eta_seconds)}")
        elif snap.status == "running":
            text = ("Fitting the linear-probe baseline on frozen features…" if not snap.baseline
                    else "Validating the baseline (epoch 0)…" if not snap.epochs else "Training the first batch…")
        else:
            text = "Preparing: loading the model and decoding the images…"
        note = ui.md_escape(snap.note[0].upper() + snap.note[1:]) if snap.note else ""
        if note and snap.progress >= 0.999:  # after the last epoch: the cross-validated check
            text = note
        st.progress(snap.progress, text=text)
        if note and text != note:  # during training: out of memory retried, W&B gone offline
            st.caption(note)
        if snap.status == "running" and st.button("Stop", help="Stops at the next batch; the last finished epoch's "
                                                               "checkpoint is kept and the run can be resumed."):
            ui.attempt("Stopping the run", manager.stop, run_id, user=ui.user())
            st.rerun()
    stages = run_config.get("unfreeze_stages", 0)
    if stages or snap.stage_message:
        st.info(f"Progressive unfreezing: stage {snap.stage} of {stages} "
                f"({ui.md_escape(snap.stage_message) or 'the first stage, as frozen as configured'})")
    if snap.status == "failed":
        st.error(f"**Training failed.** {ui.md_escape(snap.error)}")  # errors quote file names
        st.caption("Fix the cause, then resume the run from its last checkpoint on the Runs page, or start a new one.")
    elif snap.status == "interrupted":
        st.warning("This run was interrupted (the server stopped while it trained). Resume it on the Runs page.")
    elif snap.status == "stopped":
        st.warning("Stopped. Resume it on the Runs page, or evaluate its best checkpoint so far.")
    if snap.summary.get("metrics"):
        metrics, baseline = snap.summary["metrics"], snap.summary.get("baseline") or snap.baseline
        outcome = snap.summary.get("outcome") or {}
        is_probe = outcome.get("kept") == "linear probe" or snap.summary.get("best_epoch") == 0
        comparisons = outcome.get("comparisons", {})
        cols = st.columns(4)
        for col, key in zip(cols, ("test_accuracy", "test_macro_f1", "val_accuracy", "val_macro_f1")):
            if key not in metrics:
                continue
            split = key.split("_", 1)[0]
            label = key.replace("_", " ") + (" (the probe)" if is_probe else "")
            c = comparisons.get(split) if key.endswith("accuracy") else None
            if is_probe:
                col.metric(label, f"{metrics[key]:.1%}", "the linear probe itself", delta_color="off",
                           delta_arrow="off")
            elif c is not None:
                col.metric(label, f"{metrics[key]:.1%}", f"{c['difference']:+.1%} vs. the probe",
                           delta_color="normal" if c["clear"] else "off",
                           help=f"Paired 95% interval of the difference: {c['interval'][0]:+.1%} to "
                                f"{c['interval'][1]:+.1%} on {c['n']} images.")
            else:
                delta = metrics[key] - baseline[key] if key in baseline else None
                col.metric(label, f"{metrics[key]:.1%}",
                           f"{delta:+.1%} vs. the probe" if delta is not None else None)
        st.success(f"Finished in {format_seconds(snap.summary.get('seconds'))} on {snap.summary.get('device')}. "
                   "The kept model is saved.")
        if outcome.get("sentence"):
            (st.warning if is_probe else st.info)(ui.md_escape(outcome["sentence"]))
        st.page_link("pages/evaluate.py", label="Evaluate it", icon=ui.PAGES["pages/evaluate.py"].icon)
    advice = advise_run(snap.epochs, run_config, run_counts, finished=not snap.active,
                        kept=(snap.summary.get("outcome") or {}).get("kept")) if snap.epochs and run_config else ()
    for item in advice:
        (st.warning if item.severity == "warning" else st.caption)(
            f"**Advice ({item.code.replace('_', ' ')}):** {ui.md_escape(item.message)}. {ui.md_escape(item.action)}")
    if polling and not snap.active:
        st.rerun()  # the whole page: the fragments are declared again without polling


@st.fragment(run_every=CHARTS_EVERY if polling else None)
def charts_view() -> None:
    """Loss, accuracy/F1 and learning rates so far."""
    snap = ui.attempt("Reading the run's metrics", manager.snapshot, run_id)
    if snap is None:
        return
    curves = snapshot_curves(snap)
    if curves.empty:
        st.caption("The charts appear after the first validation.")
    else:
        left, right = st.columns(2)
        left.plotly_chart(charts.curves_figure(curves.loss, "Loss", "loss", curves.x_label), key="loss")
        probe = {"linear probe (val)": curves.baseline["val_accuracy"]} if "val_accuracy" in curves.baseline else {}
        right.plotly_chart(charts.curves_figure(curves.scores, "Accuracy and F1", "score", curves.x_label,
                                                baseline=probe, y_range=(0, 1.02)), key="scores")
        if not curves.lrs.empty:
            st.plotly_chart(charts.curves_figure(curves.lrs, "Learning rate per parameter group", "lr",
                                                 curves.x_label, log_y=True), key="lrs")
        st.caption("Epoch 0 is the baseline: the frozen pretrained model with a fitted linear head (the linear "
                   "probe). Fine-tuning then trains its own head and layers; at the end the run keeps the best "
                   "fine-tuning epoch or the probe, whichever validation says (see the result above).")
        if snap.gradients:
            spe = steps_per_epoch(snap.epochs, snap.total_steps, snap.total_epochs)
            frame = gradient_frame(snap.gradients, spe)
            st.plotly_chart(charts.gradient_figure(frame, curves.x_label), key="gradients")
            summary = adaptation_summary(snap.gradients, snap.frozen_groups, snap.layer_groups,
                                         run_config.get("freeze_ratio", config.freeze_ratio))
            if summary["sentence"]:
                st.caption(ui.md_escape(summary["sentence"]))


status_view()
charts_view()
