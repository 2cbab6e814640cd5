"""5 · Runs: every run in the store with its status and key metrics; overlay the curves of several and compare
their settings side by side; resume a stopped, failed or interrupted run; name, tag or delete one (its owner or
an admin)."""
import os

import streamlit as st

from core.runs import ACTIVE, FINISHED, MAX_NAME, RESUMABLE, config_table, dataset_names, epoch_curves, run_table
from pages import charts, state, ui

ui.through_app(__file__)
DELETED = "runs.deleted"  # the run just deleted, said once

st.title("5 · Runs")
if DELETED in st.session_state:
    st.success(f"Run {st.session_state.pop(DELETED)} is deleted, with its checkpoints and metrics.")
manager = ui.job_manager()
store, root = manager.store, ui.workspace().root
table = ui.attempt("Reading the run store", run_table, store, [s.run_id for s in manager.active_jobs()],
                   dataset_names(root))
me = ui.user()
if table is not None:  # a user sees their own runs; an admin all of them
    table = table[table.run.isin({r["id"] for r in manager.visible_runs(me)})]
if table is None or table.empty:
    st.info("No runs yet. Train one on the Train page; every run is kept here with its settings and metrics.")
    st.page_link("pages/train.py", label="Train", icon=ui.PAGES["pages/train.py"].icon)
    ui.stop_page()

all_tags = sorted({t for tags in table.tags for t in tags}, key=str.lower)
if all_tags:
    if "runs.tag_filter" in st.session_state:  # a tag whose last run was deleted or re-tagged
        st.session_state["runs.tag_filter"] = [t for t in st.session_state["runs.tag_filter"] if t in all_tags]
    wanted = st.multiselect("Show the runs tagged", all_tags, key="runs.tag_filter",
                            help="Runs with any of these tags; none picked: every run.")
    if wanted:
        table = table[table.tags.map(lambda tags: bool(set(tags) & set(wanted)))]
        if table.empty:
            st.info("No run has these tags.")
            ui.stop_page()
st.dataframe(table, hide_index=True, column_config={
    "tags": st.column_config.ListColumn("tags"),
    "best_val_accuracy": st.column_config.NumberColumn("best val acc.", format="percent"),
    "test_accuracy": st.column_config.NumberColumn("test acc.", format="percent"),
    "test_macro_f1": st.column_config.NumberColumn("test macro F1", format="percent"),
    "baseline_test_accuracy": st.column_config.NumberColumn("linear probe test acc.", format="percent"),
    "seconds": st.column_config.NumberColumn("seconds", format="%.0f")})
label = {r.run: (f"{r.name} ({r.run})" if r.name and r.name != r.run else r.run) + f" · {r.model} · {r.status}"
         for r in table.itertuples()}

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
if st.session_state.get("runs.open") not in label:  # deleted, or filtered out
    st.session_state.pop("runs.open", None)
# keyed: the choice stays when a run's status (part of its label) changes
run_id = st.selectbox("Run", table.run.tolist(), format_func=label.get, key="runs.open")


def _has_checkpoint(run: str) -> bool:
    path = store.get_run(run).get("best_checkpoint") or ""
    return bool(path) and os.path.exists(path)


status = table.set_index("run").status[run_id]
left, right = st.columns(2)
with left:
    if st.button("Watch it on the Train page"):
        st.session_state[ui.RUN] = st.session_state[ui.RUN_ASKED] = run_id
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
        alongside = ui.may_start_another("runs.alongside")  # a second run at once is a deliberate choice
        if st.button(f"Resume {run_id} from its last checkpoint", type="primary", disabled=not alongside):
            if ui.attempt("Resuming the run", manager.resume, run_id, user=me):
                st.session_state[ui.RUN] = run_id
                st.session_state.pop("runs.alongside", None)
                st.switch_page("pages/train.py")
    else:
        st.caption(f"Status {status}: only stopped, failed or interrupted runs can be resumed.")

# --- name, tags, delete
st.subheader("Name, tag or delete it")
record = store.get_run(run_id)  # the table lists only the user's own runs (an admin's: all): theirs to change
state.seed(f"runs.name.{run_id}", record["name"] if record["name"] != run_id else "")
state.seed(f"runs.tags.{run_id}", ", ".join(record["tags"]))
left, right = st.columns(2)
left.text_input("Name", key=f"runs.name.{run_id}", placeholder=run_id, max_chars=MAX_NAME,
                help="What this run is, in a few words (empty: its id). Shown beside the id in every list.")
right.text_input("Tags, separated by commas", key=f"runs.tags.{run_id}", placeholder="baseline, 128px",
                 help="Group runs: the filter above the table shows the runs with a tag.")
if st.button("Save the name and tags"):
    name = st.session_state[f"runs.name.{run_id}"]
    tags = st.session_state[f"runs.tags.{run_id}"].split(",")
    if ui.attempt("Naming the run", manager.rename, run_id, name, user=me) is not None and \
            ui.attempt("Tagging the run", manager.set_tags, run_id, tags, user=me) is not None:
        st.rerun()
if status in ACTIVE or manager.is_active(run_id):
    st.caption("A run that is training cannot be deleted: stop it on the Train page first.")
else:
    sure = st.checkbox(f"Yes, delete run {run_id} with its checkpoints and metrics (this cannot be undone)",
                       key=f"runs.delete_sure.{run_id}")
    if st.button("Delete the run", disabled=not sure):
        if ui.attempt("Deleting the run", manager.delete, run_id, user=me):
            if st.session_state.get(ui.RUN) == run_id:
                del st.session_state[ui.RUN]
            st.session_state[DELETED] = run_id
            st.rerun()
