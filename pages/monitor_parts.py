"""The Monitor page's sections: the figures per window as time series with the validation reference drawn in, the
open alerts, the feedback queue (flagged predictions with their images: confirm or relabel), the retrain trigger
and action, and the challenger against the champion with promote / keep."""
from __future__ import annotations

import io
import os
from typing import Any

import streamlit as st

from core.deploy.predlog import DB_FILE as LOG_FILE
from core.deploy.predlog import PredictionLog
from pages import deploy_parts, ui

QUEUE_SHOWN = 12
REVIEWED = "reviewed"  # the comment prefix of a reviewer's feedback: it takes the prediction off the queue


# --- the feedback queue
def open_log(root: str) -> PredictionLog | None:
    if not os.path.exists(os.path.join(root, "serving", LOG_FILE)):
        return None
    return PredictionLog.for_workspace(root)


def flagged(log: PredictionLog, model: str, n: int = QUEUE_SHOWN) -> list[dict[str, Any]]:
    """Served predictions of `model` whose latest feedback names another class than the one predicted, and that no
    reviewer has looked at yet; newest first."""
    rows = log.query(
        "SELECT p.id, p.version, p.predicted, p.confidence, p.at, p.width, p.height, p.image IS NOT NULL AS has_image,"
        " f.label, f.comment FROM predictions p JOIN feedback f ON f.id = (SELECT id FROM feedback WHERE "
        "prediction_id = p.id ORDER BY at DESC LIMIT 1) WHERE p.model = ? AND p.role = 'served' AND "
        "f.label != p.predicted AND f.comment NOT LIKE ? ORDER BY p.at DESC LIMIT ?", (model, f"{REVIEWED}%", n))
    return [dict(r) for r in rows]


def feedback_queue(root: str, model: str, classes: tuple[str, ...], actor: str) -> None:
    """Each flagged prediction with its image (when the server logged it): confirm the label given, or relabel."""
    log = open_log(root)
    if log is None:
        st.info("No prediction has been logged yet: serve the model (Deploy page) or try it on the Predict page.")
        return
    try:
        queue = flagged(log, model)
        if not queue:
            st.success("Nothing to review: no flagged prediction is waiting. Predictions flagged wrong (the Predict "
                       "page, or `POST /feedback`) appear here with their images.")
            return
        st.caption(f"{len(queue)} flagged prediction(s) waiting, newest first. Confirming keeps the label given; "
                   "relabelling replaces it. Both become training data for the next retrain (images the server "
                   "logged only: start it with image logging on).")
        for p in queue:
            with st.container(border=True):
                picture, what, act = st.columns([1, 3, 3], vertical_alignment="center")
                image = log.get(p["id"])["image"] if p["has_image"] else None
                if image is not None:
                    picture.image(io.BytesIO(image), width="stretch")
                else:
                    picture.caption("image not logged")
                what.markdown(f"Predicted **{ui.md_escape(p['predicted'])}** ({p['confidence']:.0%}, version "
                              f"{p['version']}); flagged as **{ui.md_escape(p['label'])}**"
                              + (f" · “{ui.md_escape(p['comment'])}”" if p["comment"] else ""))
                what.caption(f"{p['width']}×{p['height']} px · {p['id']}")
                options = list(classes) or [p["label"]]
                label = act.selectbox("True label", options, key=f"monitor.label.{p['id']}",
                                      index=options.index(p["label"]) if p["label"] in options else 0)
                confirm, relabel = act.columns(2)
                if confirm.button("Confirm", key=f"monitor.confirm.{p['id']}"):
                    if ui.attempt("Confirming", log.add_feedback, p["id"], p["label"], f"{REVIEWED}: confirmed by "
                                  f"{actor or 'a reviewer'}") is not None:
                        st.rerun()
                if relabel.button("Relabel", key=f"monitor.relabel.{p['id']}", disabled=label == p["label"]):
                    if ui.attempt("Relabelling", log.add_feedback, p["id"], label, f"{REVIEWED}: relabelled by "
                                  f"{actor or 'a reviewer'}") is not None:
                        st.rerun()
    finally:
        log.close()


# --- alerts
ALERT_TITLES = {"accuracy": "Accuracy", "drift": "Drift", "confidence": "Confidence", "latency": "Latency"}


def alerts_section(root: str, model: str) -> list:
    """The open alerts with their reasons (red), else a green line; returns them."""
    from core.monitor.alerts import AlertStore

    store = AlertStore(root)
    try:
        alerts = store.open_alerts(model)
    finally:
        store.close_connections()
    if not alerts:
        st.success("No open alert.")
    for a in alerts:
        st.error(f"**{ALERT_TITLES.get(a.kind, a.kind)}** · {ui.md_escape(a.reason)} (open since "
                 f"{ui.md_escape(_when(a.opened_at))}, last seen {ui.md_escape(_when(a.updated_at))})")
    return alerts


def _when(at: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if at else "?"


# --- retraining
RETRAIN = "retrain"  # the background task's kind; its key: the model
COMPARE = "compare"


def retrain_section(root: str, model: str, tasks, actor: str, refusal: str) -> None:
    """The trigger's state (labels collected / needed, the rules that count), an optional batch of new labelled
    images, and "Retrain now" (a background task: a normal run warm-started from the champion, registered as the
    challenger)."""
    from core.monitor.retrain import TriggerRules, retrain, trigger_state

    snap = tasks.latest(RETRAIN, model)
    # drawn on every run, also while a retrain runs: a widget left out of one run loses its value
    minimum = st.number_input("New labelled images needed", min_value=1, max_value=100_000, value=500, step=50,
                              key="monitor.min_labels", help="The trigger never retrains on a tiny batch.",
                              disabled=bool(snap and snap.active))
    if snap is not None and snap.active:
        _task_progress(tasks, snap.task_id, "Retraining")
        return
    if snap is not None and snap.status == "failed":
        st.error(f"**The retrain failed.** {ui.md_escape(snap.error)}")
    elif snap is not None and snap.status == "done":
        r = snap.result
        st.success(f"**Retrained**: run {ui.md_escape(r.run_id)} is registered as {ui.md_escape(model)} version "
                   f"{r.version}, now **challenger**. Compare it with the champion below before promoting it.")
        for line in r.focus:
            st.caption(ui.md_escape(line))
    rules = TriggerRules(min_new_labels=int(minimum))
    trigger = ui.attempt("Reading the retrain trigger", trigger_state, root, model, rules)
    if trigger is None:
        return
    st.progress(min(1.0, trigger.labels_collected / max(1, trigger.labels_needed)),
                text=f"{trigger.labels_collected} of {trigger.labels_needed} new labelled images collected")
    for line in trigger.reasons:
        st.caption(ui.md_escape(line))
    upload = st.file_uploader("More labelled images (optional): a .zip of class folders", type=["zip"],
                              key="monitor.batch")
    anyway = st.checkbox("Retrain even though the trigger says no", key="monitor.force",
                         disabled=trigger.should_retrain)
    if st.button("Retrain now", type="primary", key="monitor.retrain",
                 disabled=bool(refusal) or not (trigger.should_retrain or anyway)):
        extra = _save_upload(root, upload) if upload is not None else None
        tasks.submit(RETRAIN, model, f"retrain of {model}", retrain, root, model, extra, rules,
                     force=bool(anyway), owner=actor)
        st.rerun()
    if refusal:
        st.caption(ui.md_escape(refusal))


def _save_upload(root: str, upload) -> str:
    """The uploaded zip under <root>/uploads/ (ingest reads it from there, safely)."""
    import hashlib

    data = upload.getvalue()
    folder = os.path.join(root, "uploads")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"batch-{hashlib.sha256(data).hexdigest()[:16]}.zip")
    if not os.path.exists(path):
        from core.files import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        atomic_write(path, write, len(data))
    return path


@st.fragment(run_every=1.0)
def _task_progress(tasks, task_id: str, what: str) -> None:
    snap = tasks.snapshot(task_id)
    if snap is None or not snap.active:
        st.rerun()
    st.info(f"**{what}…** {ui.md_escape(snap.message)} · {snap.seconds:.0f} s")


# --- challenger against champion
def challenger_section(root: str, model: str, aliases: dict[str, int], tasks, actor: str) -> None:
    """The offline comparison (a background task: both versions on the challenger run's test images, old and new
    test images apart), the online one from the prediction log, the decision with its evidence, promote / keep,
    and rollback of the champion."""
    from core.monitor.challenger import compare_offline, compare_online, decide, promote, rollback

    champion, rival = aliases.get("champion"), aliases.get("challenger")
    if rival is None or rival == champion:
        st.info("No challenger to compare: retrain above (or register a version as alias *challenger* on the Deploy "
                "page)." + (f" {ui.md_escape(model)}@challenger names the champion's version." if rival else ""))
    else:
        st.markdown(f"**Champion** version {champion} against **challenger** version {rival}.")
        margin = st.number_input("Promote when the challenger is at most this many accuracy points worse (95% "
                                 "confidence)", min_value=0.0, max_value=50.0, value=DEFAULT_MARGIN_POINTS, step=0.5,
                                 key="monitor.margin", help="0 promotes only a challenger shown to be better; a few "
                                 "points accept one that is as good within that margin (non-inferiority).") / 100
        snap = tasks.latest(COMPARE, f"{model}:{champion}:{rival}")
        if snap is not None and snap.active:
            _task_progress(tasks, snap.task_id, "Comparing")
        elif st.button("Compare on the held-out images", key="monitor.compare"):
            tasks.submit(COMPARE, f"{model}:{champion}:{rival}", f"comparison of {model} {champion} vs {rival}",
                         lambda progress: compare_offline(root, model), owner=actor)
            st.rerun()
        if snap is not None and snap.status == "failed":
            st.error(f"**The comparison failed.** {ui.md_escape(snap.error)}")
        elif snap is not None and snap.status == "done":
            _show_comparison(root, model, snap.result, decide(snap.result, margin), promote, actor)
        online = ui.attempt("Reading the online comparison", compare_online, root, model)
        if online is not None and (online.paired is not None or online.arms):
            st.markdown("**On live traffic** (the prediction log; updates as feedback arrives)")
            said = decide(online, margin).sentence
            st.caption(ui.md_escape(said[:1].upper() + said[1:]) + ". "
                       + (f"The two agreed on {online.agreement:.0%} of {online.agreement_n} shadowed requests."
                          if online.agreement is not None else ""))
    if st.button("Roll back the champion", key="monitor.rollback", disabled=champion is None,
                 help="Undo the champion alias's last move: the previous version serves again."):
        moved = ui.attempt("Rolling back", rollback, root, model, actor)
        if moved is not None:
            st.session_state[FLASH] = (f"Rolled back: {model}@champion names version {moved['to_version']} again "
                                       f"(it named {moved['from_version']}).")
            st.rerun()


FLASH = "monitor.flash"
DEFAULT_MARGIN_POINTS = 1.0


def _show_comparison(root, model, comparison, decision, promote, actor) -> None:
    import pandas as pd

    rows = [{"test images": {"all": "all", "old": "old (the champion's test set)", "new": "new (collected since)"}[k],
             "n": g.n, "champion": g.champion, "challenger": g.challenger, "difference": g.difference,
             "McNemar p": g.mcnemar.get("p_value")} for k, g in comparison.groups.items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="monitor.comparison", column_config={
        c: st.column_config.NumberColumn(format="percent") for c in ("champion", "challenger", "difference")})
    changed = [c for c in comparison.per_class if abs(c["change"]) > 1e-9]
    if changed:
        st.dataframe(pd.DataFrame(changed), hide_index=True, key="monitor.per_class", column_config={
            c: st.column_config.NumberColumn(format="percent") for c in ("champion", "challenger", "change")})
    lat = comparison.latency_ms
    st.caption(f"Latency at batch 1 (median, this machine): champion {lat['champion']:.1f} ms, challenger "
               f"{lat['challenger']:.1f} ms per image.")
    sentence = ui.md_escape(decision.sentence[:1].upper() + decision.sentence[1:]) + "."
    (st.success if decision.promote else st.warning)(f"**{'Promote' if decision.promote else 'Keep the champion'}.** "
                                                     f"{sentence}")
    promote_col, keep_col = st.columns(2)
    if promote_col.button("Promote the challenger", type="primary", key="monitor.promote",
                          disabled=not decision.promote):
        moved = ui.attempt("Promoting", promote, root, model, decision, actor)
        if moved is not None:
            st.session_state[FLASH] = (f"Promoted: {model}@champion names version {decision.challenger_version} "
                                       "(a running server follows within a second). Roll back below if needed.")
            st.rerun()
    if keep_col.button("Keep the champion", key="monitor.keep"):
        st.session_state[FLASH] = (f"Kept version {decision.champion_version} as champion; version "
                                   f"{decision.challenger_version} stays registered as challenger.")
        st.rerun()


# --- the monitoring pass and its figures
REPORT = "monitor.report"  # {model: MonitorReport}: the latest check this session ran


def check_section(root: str, model: str) -> None:
    """Run a monitoring pass (on the first visit, and on "Check now"): it brings the alerts up to date."""
    from core.monitor.check import check_model

    left, right = st.columns([2, 5], vertical_alignment="center")
    period = left.selectbox("Period", ("24h", "7d", "30d"), index=1, key="monitor.period",
                            format_func={"24h": "the last 24 hours", "7d": "the last 7 days",
                                         "30d": "the last 30 days"}.get)
    reports = st.session_state.setdefault(REPORT, {})
    key = f"{model}|{period}"
    if right.button("Check now", key="monitor.check") or key not in reports:
        with st.spinner("Reading the prediction log…"):
            report = ui.attempt("Checking the model", check_model, root, model, since=period)
        if report is None:
            reports.pop(key, None)
            return
        reports[key] = report
    report = reports[key]
    st.caption(ui.md_escape(report.sentences()[0]) + f" Checked in {report.seconds:.1f} s; the same check runs "
               "from cron: `python -m core monitor " + ui.md_escape(model) + " --retrain-if-needed`.")
    with st.expander("What each rule found"):
        for f in report.findings:
            st.markdown(f"- **{ui.md_escape(f.kind)}** ({ui.md_escape(f.status)}): {ui.md_escape(f.sentence)}")


def figures_section(root: str, model: str) -> None:
    """The windows of the latest check as time series, the validation reference drawn in."""
    import pandas as pd

    from core.deploy.reference import load_reference
    from pages.charts import window_figure

    period = st.session_state.get("monitor.period", "7d")
    report = st.session_state.get(REPORT, {}).get(f"{model}|{period}")
    if report is None:
        return
    windows = [w for w in report.windows if w.n]
    if not windows:
        st.info(f"No served prediction of version {report.version} in this period: serve it (Deploy page) and send "
                "it images, or try it on the Predict page.")
        return
    reg = deploy_parts.registry(root)
    ref = load_reference(reg.get_version(model, report.version).path) if reg else None
    frame = pd.DataFrame([{**w.to_dict(), "start": pd.to_datetime(int(w.start * 1000), unit="ms"),
                           "lo": (w.accuracy_ci or (None, None))[0], "hi": (w.accuracy_ci or (None, None))[1]}
                          for w in windows])
    period_range = (pd.to_datetime(int(report.since * 1000), unit="ms"),
                    pd.to_datetime(int(report.until * 1000), unit="ms"))
    def figure(*args, **kwargs):
        return window_figure(*args, x_range=period_range, **kwargs)

    figures = [
        figure(frame, "Requests", "predictions", {"served predictions": "n"}),
        figure(frame, "Latency", "ms", {"p50": "latency_p50_ms", "p99": "latency_p99_ms"}),
        figure(frame, "Confidence", "top probability", {"mean confidence": "mean_confidence"},
                      reference={"validation": ref.mean_confidence if ref else None}),
        figure(frame, "Accuracy on predictions with feedback", "accuracy", {"accuracy": "accuracy"},
                      band=("lo", "hi"), percent=True,
                      reference={"validation": ref.val_accuracy if ref else None,
                                 "alert line (90% of validation)": 0.9 * ref.val_accuracy
                                 if ref and ref.val_accuracy is not None else None}),
        figure(frame, "Mix against the reference", "total variation distance",
                      {"predicted classes vs validation": "class_tvd", "colour modes vs training": "colour_tvd"}),
        figure(frame, "Input size", "px", {"width": "mean_width", "height": "mean_height"},
                      reference={"training width": float(ref.train_width.mean())
                                 if ref is not None and len(ref.train_width) else None}),
        figure(frame, "Brightness", "mean grey level (0-255)", {"brightness": "mean_brightness"},
                      reference={"training images": float(ref.train_brightness.mean())
                                 if ref is not None and len(ref.train_brightness) else None}),
    ]
    for row in range(0, len(figures), 2):
        for i, (col, fig) in enumerate(zip(st.columns(2), figures[row:row + 2])):
            col.plotly_chart(fig, width="stretch", key=f"monitor.figure.{row + i}")
    labelled = sum(w.n_labelled for w in windows)
    st.caption(f"{labelled} of {sum(w.n for w in windows)} predictions have feedback; the accuracy band is the "
               "Wilson 95% interval of each window.")
    if report.drift is not None:
        (st.warning if report.drift.drifted else st.caption)(
            "Embedding drift against the training data: " + ui.md_escape(report.drift.sentence()))
