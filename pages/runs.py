"""5 · Runs: every run in the store with its status and key metrics; overlay the curves of several and compare
their settings side by side; resume a stopped, failed or interrupted run."""
import os

import streamlit as st

from core.compare import (
    FINISHED,
    RESUMABLE,
    config_table,
    dataset_names,
    epoch_curves,
    run_table,
)
from pages import charts, ui

ui.through_app(__file__)

st.title("5 · Runs")
manager = ui.job_manager()
store, root = manager.store, ui.workspace().root
table = ui.attempt("Reading the run store", run_table, store, [s.run_id for s in manager.active_jobs()],
                   dataset_names(root))
if table is not None:  # a user sees their own runs; an admin all of them
    table = table[table.run.isin({r["id"] for r in manager.visible_runs(ui.user())})]
if table is None or table.empty:
    st.info("No runs yet. Train one on the Train page; every run is kept here with its settings and metrics.")
    st.page_link("pages/train.py", label="Train", icon=":material/monitoring:")
    ui.stop_page()

st.dataframe(table, hide_index=True, column_config={
    "best_val_accuracy": st.column_config.NumberColumn("best val acc.", format="percent"),
    "test_accuracy": st.column_config.NumberColumn("test acc.", format="percent"),
    "test_macro_f1": st.column_config.NumberColumn("test macro F1", format="percent"),
    "baseline_test_accuracy": st.column_config.NumberColumn("linear probe test acc.", format="percent"),
    "seconds": st.column_config.NumberColumn("seconds", format="%.0f")})
label = {r.run: f"{r.run} · {r.model} · {r.status}" for r in table.itertuples()}

# --- compare
st.subheader("Compare")
default = table[table.status.isin(FINISHED)].run.tolist()[:3] or table.run.tolist()[:1]
picked = st.multiselect("Runs to compare", table.run.tolist(), default=default, format_func=label.get)
if picked:
    curves = ui.attempt("Reading the metrics", epoch_curves, store, picked)
    if curves is not None and not curves.empty:
        left, right = st.columns(2)
        left.plotly_chart(charts.overlay_figure(curves, "val_loss", "Validation loss"), key="overlay_loss")
        right.plotly_chart(charts.overlay_figure(curves, "val_accuracy", "Validation accuracy"), key="overlay_acc")
    only_diff = st.toggle("Only the settings that differ", value=len(picked) > 1)
    configs = ui.attempt("Reading the configs", config_table, store, picked, only_diff)
    if configs is not None:
        if configs.empty:
            st.caption("The selected runs have identical settings.")
        else:
            st.dataframe(configs)

# --- open, resume
st.subheader("Open or resume a run")
run_id = st.selectbox("Run", table.run.tolist(), format_func=label.get)


def _has_checkpoint(run: str) -> bool:
    path = store.get_run(run).get("best_checkpoint") or ""
    return bool(path) and os.path.exists(path)


status = table.set_index("run").status[run_id]
left, right = st.columns(2)
with left:
    if st.button("Watch it on the Train page"):
        st.session_state[ui.RUN] = run_id
        st.switch_page("pages/train.py")
    if status in FINISHED or status == "stopped" or (status == "failed" and _has_checkpoint(run_id)):
        if st.button("Evaluate it"):
            st.session_state[ui.RUN] = run_id
            st.switch_page("pages/evaluate.py")
with right:
    if status in RESUMABLE:
        error = table.set_index("run").error[run_id]
        if error:
            st.error(f"It failed with: {ui.md_escape(error)}")  # errors quote file names
        if st.button(f"Resume {run_id} from its last checkpoint", type="primary"):
            if ui.attempt("Resuming the run", manager.resume, run_id, user=ui.user()):
                st.session_state[ui.RUN] = run_id
                st.switch_page("pages/train.py")
    else:
        st.caption(f"Status {status}: only stopped, failed or interrupted runs can be resumed.")
