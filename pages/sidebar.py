"""The sidebar app.py fills after every page: device, dataset, model, and the jobs panel (the user's running
trainings and background tasks, polling only while something runs)."""
from __future__ import annotations

import streamlit as st

from pages.ui import (
    DATASET,
    PAGES,
    current_checkpoint,
    current_model,
    dataset_name,
    device_label,
    job_manager,
    md_escape,
    user,
    workspace,
)


def show(container) -> None:
    """Device, dataset, model and running jobs, in `container` (a slot in st.sidebar)."""
    with container:
        st.caption("Transfer Studio")
        st.markdown(f"**Device:** {device_label()}")
        dataset_id = st.session_state.get(DATASET)
        name = md_escape(dataset_name(workspace().root, dataset_id)) if dataset_id else "none yet"
        st.markdown(f"**Dataset:** {name}")
        ckpt = current_checkpoint()
        st.markdown(f"**Model:** {md_escape(current_model())}"
                    + (f" (your weights: {md_escape(ckpt['name'])})" if ckpt else ""))
        manager = job_manager()
        # polls only while something runs: every rerun costs the server CPU that training on it needs
        (_polling_jobs_panel if manager.active_jobs() or manager.tasks.active() else _jobs_panel)()


def _jobs_panel_view(polling: bool = False) -> None:
    from core.plan import format_seconds

    manager = job_manager()
    me = user()  # a user sees their own runs and tasks; an admin everyone's
    mine = {r["id"] for r in manager.visible_runs(me)} if not me.is_admin else None
    jobs = [j for j in manager.active_jobs() if mine is None or j.run_id in mine]
    tasks = manager.tasks.active(None if me.is_admin else me.name)
    if not jobs and not tasks:
        if polling:  # it just ended: redraw the page once (it then stops polling)
            st.rerun(scope="app")
        st.caption("Nothing running.")
        return
    for snap in jobs:
        st.markdown(f"**Training** `{snap.run_id}` ({snap.status})")
        st.progress(snap.progress, text=f"{snap.progress:.0%} · ETA {format_seconds(snap.eta_seconds)}")
    if jobs:
        st.page_link("pages/train.py", label="Watch it", icon=PAGES["pages/train.py"].icon)
    for task in tasks:  # bake-offs, evaluation reports
        st.markdown(f"**Running:** {md_escape(task.label)}")  # labels and messages may name a dataset
        st.caption(f"{md_escape(task.message)} · {format_seconds(task.seconds)}")


_jobs_panel = st.fragment(_jobs_panel_view)
_polling_jobs_panel = st.fragment(run_every=2)(lambda: _jobs_panel_view(polling=True))
