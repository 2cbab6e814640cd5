"""8 · Deploy: a trained run leaves the studio. Export it into a checked bundle (ONNX or a torch.export program, in
the background: core.deploy.export through the process-wide TaskManager, with the parity figure), register a
passed bundle as a version of a named model with an alias, move aliases (promote, roll back) with their history,
start and stop the prediction server, and read the latest predictions with their feedback."""
import os

import pandas as pd
import streamlit as st

from core.deploy.export import FORMATS, export_run, list_exports
from core.deploy.parity import Parity
from pages import deploy_parts as parts
from pages import state, ui

ui.through_app(__file__)

EXPORT = "export"  # the background task's kind; its key: "<run id>:<format>"
FORMAT_LABELS = {"onnx": "ONNX (served by the prediction server)", "pt2": "torch.export program (.pt2)"}
NO_ALIAS = ""


def parity_sentence(parity: dict) -> str:
    try:
        return Parity(**parity).sentence()
    except TypeError:  # a bundle written by another version of the exporter
        return f"max |logit difference| {parity.get('max_abs_logit_diff')}"


@st.fragment(run_every=1.0)
def export_progress(task_id: str) -> None:
    """The export's progress while it runs (the page stays usable); the whole page again when it ends."""
    snap = tasks.snapshot(task_id)
    if snap is None or not snap.active:
        st.rerun()
    st.info(f"**Running: {ui.md_escape(snap.label)}.** {ui.md_escape(snap.message[:1].upper() + snap.message[1:])}"
            f" · {snap.seconds:.0f} s")
    st.caption("An ONNX export with its parity check takes about half a minute; it runs in the background.")


def show_result(snap) -> None:
    """The export this session just ran: its parity verdict, green or red."""
    if snap.status == "failed":
        st.error(f"**The export failed.** {ui.md_escape(snap.error)}")
        return
    result = snap.result
    sentence = ui.md_escape(parity_sentence(result.parity))
    if result.passed:
        st.success(f"**Exported** in {result.seconds:.0f} s with the {ui.md_escape(result.exporter)}. {sentence}.")
    else:
        st.error(f"**The export failed its parity check**, so it cannot be registered (its files are kept for "
                 f"their figures). {sentence}.")


st.title("8 · Deploy")
st.write("Export a trained run into a bundle checked against the PyTorch model, register it as a version of a named "
         "model, choose which version an alias such as *champion* names (and roll it back), serve it over HTTP, "
         "and see what it predicted and which predictions people flagged as wrong.")
manager = ui.job_manager()
tasks, runs_dir, root, me = manager.tasks, manager.store.runs_dir, ui.workspace().root, ui.user()
refusal = ui.policy().training_refusal()

# --- export
st.subheader("Export a run")
runs = parts.exportable_runs(manager, me)
exports: list[dict] = []
if not runs:
    st.info("No finished run yet: train one first. Its best checkpoint is what gets exported, checked against the "
            "PyTorch model on the run's test images, and registered.")
    st.page_link("pages/train.py", label="Train", icon=ui.PAGES["pages/train.py"].icon)
else:
    ids = [r["id"] for r in runs]
    by_id = {r["id"]: r for r in runs}
    state.seed("deploy.run", st.session_state.get(ui.RUN) if st.session_state.get(ui.RUN) in ids else ids[0])
    if st.session_state["deploy.run"] not in ids:
        st.session_state["deploy.run"] = ids[0]
    left, right = st.columns([3, 2])
    run_id = left.selectbox("Run", ids, key="deploy.run",
                            format_func=lambda i: f"{i} · {by_id[i]['model']} · {by_id[i]['status']}")
    state.seed("deploy.format", FORMATS[0])
    fmt = right.radio("Format", FORMATS, key="deploy.format", horizontal=True, format_func=FORMAT_LABELS.get)
    snap = tasks.latest(EXPORT, f"{run_id}:{fmt}", owner=me.name)
    if st.button("Export", type="primary", key="deploy.export", disabled=bool(refusal) or bool(snap and snap.active),
                 help="Writes the model file, the preprocessing record, the class names, the checkpoint and a model "
                      "card into the run's exports/ folder, after the parity check."):
        tasks.submit(EXPORT, f"{run_id}:{fmt}", f"export of run {run_id} to {fmt}", export_run, runs_dir, run_id,
                     fmt, owner=me.name)
        st.rerun()  # the page again, the button disabled while it runs
    if refusal:
        st.caption(ui.md_escape(refusal))
    if snap is not None and snap.active:
        export_progress(snap.task_id)
    elif snap is not None:
        show_result(snap)
    exports = list_exports(runs_dir, run_id)
    if exports:
        st.dataframe(pd.DataFrame(parts.export_rows(exports)), hide_index=True, key="deploy.exports",
                     column_config={"max |logit diff|": st.column_config.NumberColumn(format="%.2e"),
                                    "limit": st.column_config.NumberColumn(format="%.1e")})
        st.caption(f"Exports of run {run_id}, newest first, in {os.path.join(runs_dir, run_id, 'exports')}. The "
                   "parity check feeds the run's test images through the bundle's own preprocessing into the "
                   "exported model and through the training code into PyTorch: the top-1 class must agree on "
                   "every image and the logits within the limit.")
    elif snap is None:
        st.caption("This run has no export yet.")

# --- register
st.subheader("Register an export")
passed = [e for e in exports if e.get("status") == "ok"]
if not runs:
    st.caption("Export a run first.")
elif not passed:
    st.info("No export of this run has passed its parity check yet: export it above. An export that failed the "
            "check cannot be registered.")
else:
    with st.form("deploy.register_form"):
        a, b, c = st.columns([3, 2, 2])
        bundle_dir = a.selectbox("Export", [e["path"] for e in passed], format_func=os.path.basename,
                                 key="deploy.bundle")
        name = b.text_input("Model name", key="deploy.name", placeholder="e.g. digits",
                            help="Letters, digits, '.', '_' and '-' (at most 64). A new name starts version 1; an "
                                 "existing one gets its next version.")
        alias = c.selectbox("Alias", [NO_ALIAS, *parts.ALIASES], key="deploy.alias",
                            format_func=lambda x: x or "none (set one later)")
        note = st.text_input("Note (optional)", key="deploy.note")
        submitted = st.form_submit_button("Register", type="primary")
    if submitted:
        version = ui.attempt("Registering the export", parts.register, root, bundle_dir, name.strip(), note, me.name)
        if version is not None:
            moved = ui.attempt(f"Setting {version.name}@{alias}", parts.registry(root).set_alias, version.name, alias,
                               version.version, "registered from the Deploy page", me.name) if alias else None
            st.session_state["deploy.model"] = version.name  # the registry below shows it
            st.success(f"Registered **{ui.md_escape(version.name)}** version {version.version}"
                       + (f", now {ui.md_escape(alias)}" if moved else "") + ". Try it on the Predict page.")
            st.page_link("pages/predict.py", label="Predict", icon=ui.PAGES["pages/predict.py"].icon)
    picked = next((e for e in passed if e["path"] == st.session_state.get("deploy.bundle")), passed[0])
    card = os.path.join(picked["path"], "card.md")
    if os.path.exists(card):
        with st.expander(f"Model card of {picked['folder']}"), open(card, encoding="utf-8") as f:
            st.code(f.read(), language="markdown", wrap_lines=True)  # as text: it quotes class names

# --- the registry
st.subheader("Registry")
parts.registry_section(root, me.name)

# --- the prediction server
st.subheader("Prediction server")
status = parts.server_section(root, tasks, me.name, refusal)

# --- what it predicted
st.subheader("Latest predictions")
parts.predictions_section(root, bool(status["running"]))
