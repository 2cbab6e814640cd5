"""What the Deploy and Predict pages share: the runs that can be exported and their exports, the registry and the
models it can serve, and the Deploy page's lower sections (the registry's versions, aliases and history with
promote and rollback; the prediction server; the latest predictions with their feedback)."""
from __future__ import annotations

import os
from typing import Any

import pandas as pd
import streamlit as st

from core.deploy.predlog import DB_FILE as LOG_FILE
from core.deploy.predlog import PredictionLog
from core.deploy.registry import DB_FILE as REGISTRY_FILE
from core.deploy.registry import Registry, check_name
from core.deploy.serving import server_status, start_server, stop_server
from core.runs import FINISHED
from pages import ui

ALIASES = ("champion", "challenger")  # offered first; any other name may be typed
FLASH = "deploy.flash"  # str: what the last registry action did, said once after its rerun
SERVER = "server"  # the background task that starts the prediction server
PREDICTIONS_SHOWN = 50


# --- runs and their exports
def exportable_runs(manager, user) -> list[dict[str, Any]]:
    """Runs this user may see that kept a best checkpoint (finished, or stopped / failed after an epoch)."""
    return [r for r in manager.visible_runs(user) if r["best_checkpoint"] and os.path.exists(r["best_checkpoint"])
            and (r["status"] in FINISHED or r["status"] in ("stopped", "failed"))]


def export_rows(exports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for e in exports:
        parity = e.get("parity") or {}
        rows.append({"export": e["folder"], "format": e.get("model_format"),
                     "parity": "passed" if e.get("status") == "ok" else "FAILED",
                     "max |logit diff|": parity.get("max_abs_logit_diff"), "limit": parity.get("tolerance"),
                     "top-1 identical": parity.get("top1_identical"), "images": parity.get("n_images"),
                     "exported at": e.get("exported_at")})
    return rows


# --- the registry
def registry(root: str, create: bool = False) -> Registry | None:
    """The workspace's registry (<root>/registry); None when there is none yet and `create` is False (reading
    an empty workspace creates nothing)."""
    folder = os.path.join(root, "registry")
    if not create and not os.path.exists(os.path.join(folder, REGISTRY_FILE)):
        return None
    return Registry(folder)


def register(root: str, bundle_dir: str, name: str, note: str, actor: str):
    """Register a bundle as the next version of `name`; a bad name is refused before the registry is created."""
    check_name(name)
    return registry(root, create=True).register(bundle_dir, name, note, actor)


def registry_refs(reg: Registry | None) -> dict[str, str]:
    """ref -> label of every alias ("digits@champion") and version ("digits:2") a server or Predictor can load."""
    refs: dict[str, str] = {}
    for model in reg.list_models() if reg else ():
        name = model["name"]
        for alias, version in sorted(model["aliases"].items(), key=lambda a: (a[0] not in ALIASES, a[0])):
            refs[f"{name}@{alias}"] = f"{name}@{alias} (now version {version})"
        for version in range(model["latest_version"] or 0, 0, -1):
            refs[f"{name}:{version}"] = f"{name}:{version}"
    return refs


def take_flash() -> None:
    if FLASH in st.session_state:
        st.success(st.session_state.pop(FLASH))


def _metric_columns(versions: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Test metrics first, then validation ones; losses after the scores."""
    order = {"accuracy": 0, "macro_f1": 1, "macro_precision": 2, "macro_recall": 3, "loss": 4}
    return sorted(names, key=lambda m: (not m.startswith("test_"), order.get(m.split("_", 1)[1], 9), m))


def registry_section(root: str, actor: str) -> None:
    """Per model: its versions with their metrics side by side, its aliases, promote and rollback, the history."""
    reg = registry(root)
    models = [m["name"] for m in reg.list_models()] if reg else []
    if not models:
        st.info("No model registered yet: export a run above and register its bundle (or `python -m core registry "
                "register BUNDLE_DIR --name NAME`). A registered version never changes; aliases such as champion "
                "name the version to serve and can be moved back.")
        return
    if st.session_state.get("deploy.model") not in models:
        st.session_state["deploy.model"] = models[0]
    name = st.selectbox("Model", models, key="deploy.model")
    shown = ui.attempt("Reading the registry", reg.show, name)
    if shown is None:
        return
    take_flash()
    aliases = {a["alias"]: a["version"] for a in shown["aliases"]}
    st.markdown("**Aliases:** " + (" · ".join(f"**{ui.md_escape(a)}** → version {v}" for a, v in aliases.items())
                                   or "none yet (set one below)"))
    metrics = _metric_columns(shown["versions"], shown["metric_names"])
    rows = [{"version": v["version"], "aliases": ", ".join(v["aliases"]), **{m: v["metrics"].get(m) for m in metrics},
             "parity |diff|": (v.get("parity") or {}).get("max_abs_logit_diff"), "run": v["run_id"],
             "architecture": v["architecture_name"], "format": v["model_format"], "created": v["created"],
             "by": v["created_by"], "note": v["note"]}
            for v in reversed(shown["versions"])]  # newest first, the metrics beside each other
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="deploy.versions", column_config={
        **{m: st.column_config.NumberColumn(m.replace("_", " ").replace("f1", "F1"),
                                            format="%.3f" if m.endswith("loss") else "percent") for m in metrics},
        "parity |diff|": st.column_config.NumberColumn(format="%.1e")})

    versions = [v["version"] for v in reversed(shown["versions"])]
    alias_choices = list(dict.fromkeys([*ALIASES, *aliases]))
    left, middle, right, button = st.columns([2, 2, 4, 2], vertical_alignment="bottom")
    alias = left.selectbox("Alias", alias_choices, key="deploy.promote_alias")
    version = middle.selectbox("Version", versions, key="deploy.promote_version",
                               format_func=lambda v: f"version {v}" + (" (now)" if aliases.get(alias) == v else ""))
    reason = right.text_input("Why", key="deploy.promote_reason", placeholder="e.g. beats version 1 on the test set")
    if button.button("Promote", type="primary", key="deploy.promote"):
        moved = ui.attempt(f"Moving {name}@{alias}", reg.set_alias, name, alias, version, reason, actor)
        if moved is not None:
            st.session_state[FLASH] = (f"{ui.md_escape(name)}@{ui.md_escape(alias)} now names version {version}."
                                       if moved["changed"] else
                                       f"{ui.md_escape(name)}@{ui.md_escape(alias)} already named version {version}.")
            st.rerun()

    history = shown["history"]
    if aliases:
        cols = st.columns(max(len(aliases), 3))
        for col, (a, current) in zip(cols, aliases.items()):
            last = next((h for h in history if h["alias"] == a), None)
            back = last["from_version"] if last else None
            with col:
                if st.button(f"Roll back {ui.md_escape(a)}", key=f"deploy.rollback.{a}", disabled=back is None,
                             help=(f"Move {a} back to version {back}: undoes its last move ({last['at']})"
                                   if back is not None else f"{a} has named version {current} since it was set")):
                    moved = ui.attempt(f"Rolling back {name}@{a}", reg.rollback, name, a, "", actor)
                    if moved is not None:
                        st.session_state[FLASH] = (f"Rolled back: {ui.md_escape(name)}@{ui.md_escape(a)} names "
                                                   f"version {moved['to_version']} again (it named "
                                                   f"{moved['from_version']}).")
                        st.rerun()
    st.markdown("**Alias history** (newest first)")
    if history:
        st.dataframe(pd.DataFrame([{"at": h["at"], "alias": h["alias"], "from": h["from_version"],
                                    "to": h["to_version"], "kind": h["kind"], "reason": h["reason"],
                                    "by": h["actor"]} for h in history]), hide_index=True, key="deploy.history",
                     column_config={"from": st.column_config.NumberColumn(format="%d"),
                                    "to": st.column_config.NumberColumn(format="%d")})
    else:
        st.caption("No alias has been set yet.")


# --- the prediction server
def server_section(root: str, tasks, owner: str, refusal: str) -> dict[str, Any]:
    """The server's status with a stop button, or a form to start one (a background task: loading the model
    takes a few seconds); returns the status."""
    status = server_status(root)
    starting = tasks.latest(SERVER, root)
    if starting is not None and starting.active:
        _server_progress(tasks, starting.task_id)
        return status
    if status["running"]:
        url = status["url"]
        health = status.get("health") or {}
        if status["healthy"]:
            st.success(f"**Running** at {url}, serving **{ui.md_escape(health.get('model'))}** version "
                       f"{health.get('version')} (asked for {ui.md_escape(status['ref'])}; pid {status['pid']}, "
                       f"since {status.get('started')}).")
        else:
            st.warning(f"The server (pid {status['pid']}, {url}) is running but does not answer /health yet.")
        rival = health.get("challenger")
        if rival:
            how = ("in the shadow: it predicts every request, logged only" if rival["mode"] == "shadow" else
                   f"in an A/B test: it answers {rival['share']:.0%} of the requests")
            st.info(f"Beside it: **{ui.md_escape(rival['ref'])}** (version {rival['version']}) {how}."
                    + ("" if rival["active"] else " It names the served version now, so nothing is compared.")
                    + " The Monitor page compares the two as feedback arrives.")
        st.markdown("Send it an image from a terminal on this machine:")
        st.code(f"curl -F file=@image.jpg {url}/predict", language="bash")
        st.markdown(f"The API's own documentation: [{url}/docs]({url}/docs) · Prometheus metrics: "
                    f"[{url}/metrics]({url}/metrics)")
        if st.button("Stop the server", key="deploy.stop"):
            with st.spinner("Stopping the server (it finishes the requests in flight)…"):
                ui.attempt("Stopping the server", stop_server, root)
            st.rerun()
        return status
    if starting is not None and starting.status == "failed":
        st.error(f"**Starting the server failed.** {ui.md_escape(starting.error)}")
    refs = registry_refs(registry(root))
    if not refs:
        st.info("Not running. It serves a registered model: register an export above first, then start it here "
                "(or `python -m core serve NAME@champion`).")
        return status
    st.caption("Not running. It serves a registry model with ONNX Runtime: `POST /predict`, `POST /feedback`, "
               "`GET /health`, `GET /metrics`; it binds 127.0.0.1. Following an alias (name@alias), it switches "
               "to the new version when the alias moves.")
    left, right, button = st.columns([4, 2, 2], vertical_alignment="bottom")
    ref = left.selectbox("Serve", list(refs), format_func=refs.get, key="deploy.serve_ref")
    port = right.number_input("Port (0: any free one)", min_value=0, max_value=65535, value=8000, step=1,
                              key="deploy.serve_port")
    beside = _challenger_form(refs, ref)
    if button.button("Start the server", type="primary", key="deploy.start", disabled=bool(refusal)):
        tasks.submit(SERVER, root, f"starting the prediction server for {ref}",
                     lambda progress: start_server(root, ref, int(port) or None, extra_args=beside), owner=owner)
        st.rerun()
    if refusal:
        st.caption(ui.md_escape(refusal))
    return status


def _challenger_form(refs: dict[str, str], ref: str) -> list[str]:
    """A second version beside the served one (shadow or A/B): the server's extra arguments."""
    left, middle, right = st.columns([4, 2, 2], vertical_alignment="bottom")
    others = ["", *(r for r in refs if r != ref)]
    rival = left.selectbox("Beside it (a challenger)", others, key="deploy.serve_challenger",
                           format_func=lambda r: refs.get(r, "none"),
                           help="Measure a new version on the same traffic before promoting it: in the shadow it "
                                "predicts every request and only the served model answers; in an A/B test it "
                                "answers a share of the requests.")
    mode = middle.radio("How", ("shadow", "ab"), key="deploy.serve_mode", horizontal=True, disabled=not rival,
                        format_func={"shadow": "shadow", "ab": "A/B"}.get)
    share = right.slider("A/B share", 0.05, 0.5, 0.1, 0.05, key="deploy.serve_share",
                         disabled=not rival or mode != "ab")
    return ["--challenger", rival, "--mode", mode, "--ab-share", f"{share:g}"] if rival else []


@st.fragment(run_every=1.0)
def _server_progress(tasks, task_id: str) -> None:
    snap = tasks.snapshot(task_id)
    if snap is None or not snap.active:
        st.rerun()  # started (or failed): the whole page again
    st.info(f"**Starting the prediction server…** loading the model ({snap.seconds:.0f} s)")


def predictions_section(root: str, server_running: bool) -> None:
    """The latest predictions of the log (the server's and the Predict page's) with their feedback; polled every
    5 s while the server runs."""

    @st.fragment(run_every=5.0 if server_running else None)
    def latest() -> None:
        path = os.path.join(root, "serving", LOG_FILE)
        if not os.path.exists(path):
            st.info("No predictions yet: try a model on the Predict page, or send the server an image.")
            return
        log = PredictionLog.for_workspace(root)
        try:
            rows, total = log.recent(PREDICTIONS_SHOWN), log.count()
        finally:
            log.close()
        if not rows:
            st.info("No predictions yet: try a model on the Predict page, or send the server an image.")
            return
        flagged = sum(r["feedback"] is not None for r in rows)
        st.caption(f"The latest {len(rows)} of {total:,} predictions; {flagged} of them with feedback."
                   + (" Refreshed every 5 s while the server runs." if server_running else ""))
        st.dataframe(pd.DataFrame([{
            "at": r["at_iso"], "model": r["model"], "version": r["version"], "predicted": r["predicted"],
            "confidence": r["confidence"], "right label": (r["feedback"] or {}).get("label"),
            "comment": (r["feedback"] or {}).get("comment"), "size": f"{r['width']}×{r['height']}",
            "latency ms": r["latency_ms"], "id": r["id"]} for r in rows]), hide_index=True,
            key="deploy.predictions", column_config={
                "confidence": st.column_config.NumberColumn(format="percent"),
                "latency ms": st.column_config.NumberColumn(format="%.1f")})
        if not server_running:
            st.button("Refresh", key="deploy.refresh_predictions")

    latest()
