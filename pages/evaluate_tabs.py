"""The Evaluate page's six tabs, one function each (pages/evaluate.py picks the run and split and shows the
headline numbers): the confusion matrix and errors, per-class scores and calibration, the full report built in
the background, the cost of errors, a second run compared image by image, and the export.

A helper module of pages/evaluate.py, not a page: app.py's navigation (ui.PAGES) does not list it."""
from __future__ import annotations

import json
import os

import pandas as pd
import streamlit as st

from core.evaluate import (
    CORRUPTIONS,
    FINE_TUNED,
    SEVERITIES,
    EvaluationOptions,
    build_report,
    cell_images,
    compare_evaluations,
    cost_model,
    default_report_dir,
    deployment_rows,
    error_costs,
    figures,
    model_rows,
    progress_steps,
    stored_name,
    with_costs,
    write_report,
)
from core.runs import dataset_names
from pages import state, ui

# --- session keys: widget keys are "evaluate.*"; the "…saved" keys outlive a visit to another page
CELL = "evaluate.cell"  # "t,p": the confusion-matrix cell whose images are shown
CONFUSION = "evaluate.confusion"  # the chart's selection
REPORT_SAVED = "evaluate.report.saved"  # the last report's options (widgets' values), to find it again
COSTS_SAVED = "evaluate.costs.saved"
EXPORTED = "evaluate.exported"  # dict(task, files) of the last export
N_SHOWN = 24  # images shown per grid
REPORT_DEFAULTS = {"baselines": True, "from_scratch": False, "corruptions": list(CORRUPTIONS),
                   "severities": list(SEVERITIES), "latency": True, "latency_budget_s": 1.0, "drift_dataset": "",
                   "drift_path": "", "drift_store": False}  # the report form's widgets (evaluate.opt.<name>)
COMPARISON_LABELS = {"accuracy": "accuracy", "macro_f1": "macro F1", "macro_precision": "macro precision",
                     "macro_recall": "macro recall", "top3_accuracy": "top-3 accuracy",
                     "top5_accuracy": "top-5 accuracy", "log_loss": "log loss", "ece": "calibration error (ECE)"}


def checkpoint_mtime(run: dict) -> float:
    path = run["best_checkpoint"]
    return os.path.getmtime(path) if path and os.path.exists(path) else 0.0


def cell_of(value, n: int) -> tuple[int, int] | None:
    """The (true, predicted) indices of a "t,p" cell key, None unless both are below n."""
    try:
        t, p = map(int, str(value).split(","))
    except ValueError:
        return None
    return (t, p) if 0 <= t < n and 0 <= p < n else None


def milliseconds(ms: float) -> str:
    """A latency short enough for a metric tile: "15.6 ms", "7,938 ms"."""
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def image_grid(items, caption) -> None:
    """The first N_SHOWN images, each with `caption(item)` (shown as text: captions render Markdown, and they
    name classes)."""
    shown = list(items)[:N_SHOWN]
    if shown:
        st.image([m["path"] for m in shown], width=96, caption=[ui.md_escape(caption(m)) for m in shown])
    if len(items) > N_SHOWN:
        st.caption(f"The first {N_SHOWN} of {len(items)}.")


# ------------------------------------------------------------------------------ confusion and errors
def confusion_tab(result) -> None:
    """The confusion matrix (a click on a cell shows its images), the most confused pairs, the mistakes."""
    classes = result.classes
    cells = sorted(((t, p) for t in range(len(classes)) for p in range(len(classes)) if result.confusion[t][p]),
                   key=lambda c: (c[0] == c[1], -result.confusion[c[0]][c[1]], c))
    options = [f"{t},{p}" for t, p in cells]
    chosen = st.session_state.get(CELL)
    if cell_of(chosen, len(classes)) is None:
        st.session_state[CELL] = options[0] if options else None  # none yet, or a cell of a larger matrix
    elif chosen not in options:
        options.append(chosen)  # an empty cell, clicked

    def cell_label(option: str) -> str:
        t, p = map(int, option.split(","))
        count = result.confusion[t][p]
        return (f"{classes[t]} → {classes[p]}: {count} image{'' if count == 1 else 's'}"
                + (" (correct)" if t == p else ""))

    def clicked() -> None:
        """A click on the matrix picks the cell in the list below (the list also works without a mouse)."""
        event = st.session_state.get(CONFUSION)
        points = event["selection"]["points"] if event else []
        cell = figures.confusion_cell(points[0]) if points else None
        if cell is not None:
            st.session_state[CELL] = f"{cell[0]},{cell[1]}"

    chart, pick = st.columns([3, 2])
    with chart:
        normalized = st.toggle("Colour by share of each true class", value=True, key="evaluate.normalized")
        st.plotly_chart(figures.confusion_figure(result, normalized, selected=cell_of(st.session_state[CELL],
                                                                                    len(classes))), key=CONFUSION,
                        on_select=clicked, selection_mode="points")
    with pick:
        st.markdown("**Images behind a cell.** Click a cell of the matrix, or pick it here:")
        cell = st.selectbox("Cell (true → predicted)", options, key=CELL, format_func=cell_label)
        if cell:
            t, p = cell_of(cell, len(classes))
            images = ui.attempt("Finding the images", cell_images, result, t, p)
            if images is not None:
                what = "classified correctly" if t == p else f"predicted as {ui.md_escape(classes[p])}"
                of = f"of {ui.md_escape(classes[t])} {what}"
                if images:
                    st.markdown(f"**{len(images)} image{'' if len(images) == 1 else 's'} {of}**, most confident first")
                    image_grid(images, lambda m: f"{m['confidence']:.0%}")
                else:
                    st.markdown(f"**No image {of}.**")

    st.subheader("Most confused class pairs")
    if result.confused_pairs:
        st.dataframe(pd.DataFrame(result.confused_pairs), hide_index=True, column_config={
            "predicted": "predicted as", "count": "images",
            "share": st.column_config.ProgressColumn("share of the true class", format="percent", min_value=0,
                                                     max_value=1)})
    else:
        st.caption("No class is taken for another.")
    st.subheader(f"Misclassified images ({len(result.misclassified)})")
    if result.misclassified:
        st.caption("The most confident mistakes first: look for wrong labels, ambiguous images, or a class the model "
                   "confuses systematically.")
        image_grid(result.misclassified, lambda m: f"{m['true']} → {m['predicted']} ({m['confidence']:.0%})")
    else:
        st.success("No mistakes on this split.")
    st.subheader("Highest-loss images")
    st.caption("The images the model found least likely to be what they are labelled (correct ones included): "
               "label errors often hide here.")
    image_grid(result.highest_loss, lambda m: f"{m['true']} → {m['predicted']} (p(true) {m['p_true']:.0%})")


# ---------------------------------------------------------------------------- per class, calibration
def per_class_tab(result) -> None:
    """Precision, recall and F1 per class, and the reliability diagram."""
    # the whole width: in a column beside the chart, recall, F1 and support were cut off
    st.dataframe(pd.DataFrame(result.per_class), hide_index=True, width="stretch", column_config={
        "class": st.column_config.TextColumn("class", width="medium"),
        "precision": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1, width="medium"),
        "recall": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1, width="medium"),
        "f1": st.column_config.ProgressColumn("F1", format="percent", min_value=0, max_value=1, width="medium"),
        "support": st.column_config.NumberColumn("support (images)", width="small")})
    st.plotly_chart(figures.per_class_figure(result), key="evaluate.per_class")
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.reliability_figure(result), key="evaluate.reliability")
    right.markdown("**Calibration.** Bars below the diagonal: the model is more confident than it is right "
                   "(over-confident); above: under-confident. The expected calibration error (ECE) is the average "
                   f"gap, weighted by images: **{result.metrics['ece']:.3f}** here.")


# ------------------------------------------------------------------------------------- full report
def report_tab(tasks, runs_dir: str, run_id: str, split: str, mtime: float):
    """The report form and the report built in the background (a fragment shows its progress). Returns the
    finished report and its task's snapshot, (None, snapshot or None) until there is one."""
    st.markdown("Sets the fine-tuned model beside simple baselines on the same images, tests whether the "
                "difference is beyond chance (McNemar), measures speed and memory on this machine, and how "
                "accuracy holds up under corruptions and on a second data source. It runs in the background: "
                "you may leave this page.")
    for name, value in {**REPORT_DEFAULTS, **st.session_state.get(REPORT_SAVED, {})}.items():
        state.seed(f"evaluate.opt.{name}", value)
    workspace = ui.workspace()
    names = ui.attempt("Listing the datasets", dataset_names, workspace.root) or {}
    if st.session_state["evaluate.opt.drift_dataset"] not in ["", *names]:
        st.session_state["evaluate.opt.drift_dataset"] = ""
    with st.form("evaluate.report_form"):
        a, b, c = st.columns(3)
        a.checkbox("Baselines", key="evaluate.opt.baselines",
                   help="Majority class, colour + HOG features with logistic regression, and the linear probe: "
                        "the frozen pretrained model with a linear head. Seconds to a minute.")
        a.checkbox("Train from scratch too (slow)", key="evaluate.opt.from_scratch",
                   help="The same architecture from random weights with the run's epoch budget.")
        a.checkbox("Latency and memory", key="evaluate.opt.latency")
        a.number_input("Seconds of timing per batch size", min_value=0.05, max_value=30.0, step=0.25,
                       key="evaluate.opt.latency_budget_s")
        b.multiselect("Corruptions", list(CORRUPTIONS), key="evaluate.opt.corruptions",
                      help="None: no robustness sweep.")
        b.multiselect("Severities", list(SEVERITIES), key="evaluate.opt.severities",
                      help="1, 2, 3 are ImageNet-C's levels 1, 3 and 5.")
        c.selectbox("Second data source (drift)", ["", *names], key="evaluate.opt.drift_dataset",
                    format_func=lambda d: names.get(d, d) if d else "none")
        c.text_input("…or a folder, archive or CSV on this server", key="evaluate.opt.drift_path",
                     help="Images the run trained or validated on are left out. A path here wins over the list.")
        c.checkbox("Store it in this workspace as a dataset", key="evaluate.opt.drift_store",
                   help="A folder, archive or CSV given as a path is copied into the workspace as a dataset (named "
                        "after its folder, e.g. flowers/test) and listed under Stored datasets on the Dataset page; "
                        "the report needs that copy.")
        submitted = st.form_submit_button("Build the full report", type="primary")
    chosen = {name: st.session_state[f"evaluate.opt.{name}"] for name in REPORT_DEFAULTS}
    drift_path = chosen["drift_path"].strip()  # a server path: only where this server allows reading data
    drift = (ui.attempt("Checking the second data source", workspace.server_path, drift_path) if drift_path
             else chosen["drift_dataset"] or None)
    storing = bool(drift_path and drift is not None and os.path.exists(drift))  # a missing path: the report says so
    unconfirmed = storing and not chosen["drift_store"]
    if storing:
        (st.warning if unconfirmed and submitted else st.caption)(
            f"{ui.md_escape(drift_path)} will be stored in this workspace as the dataset "
            f"**{ui.md_escape(stored_name(drift))}** (listed under Stored datasets)"
            + (": tick *Store it in this workspace as a dataset* and build again, or pick a stored dataset."
               if unconfirmed else "."))
    options = None if drift_path and drift is None else ui.attempt(
        "Checking the report options", EvaluationOptions, split=split, drift_data=drift,
        workspace_dir=workspace.root, baselines=chosen["baselines"], from_scratch=chosen["from_scratch"],
        corruptions=tuple(x for x in CORRUPTIONS if x in chosen["corruptions"]),
        severities=tuple(sorted(chosen["severities"])), latency=chosen["latency"],
        latency_budget_s=float(chosen["latency_budget_s"]))
    task_key = json.dumps({"run": run_id, "checkpoint": mtime, **(options.to_dict() if options else {})},
                          sort_keys=True)
    if submitted and options is not None and not unconfirmed:
        st.session_state[REPORT_SAVED] = chosen
        tasks.submit("report", task_key, f"Report on run {run_id} ({split})", build_report, runs_dir, run_id,
                     options, owner=ui.user().name)
    snap = tasks.latest("report", task_key, owner=ui.user().name) if options is not None else None

    @st.fragment(run_every=1.0)
    def report_progress(task_id: str, steps: int) -> None:
        now = tasks.snapshot(task_id)
        if now is None or not now.active:
            st.rerun()  # finished: the whole page shows the report
        st.progress(min(0.99, now.messages / max(steps, 1)),
                    text=f"Building the report · {ui.md_escape(now.message)} · {now.seconds:.0f} s")

    report = None
    if snap is None:
        st.caption("Not built yet for this run, split and these options.")
    elif snap.active:
        report_progress(snap.task_id, progress_steps(options))
    elif snap.status == "failed":
        st.error(f"**Building the report failed.** {ui.md_escape(snap.error)}")
    else:
        report = snap.result
        st.caption(f"Built in {report.seconds:.0f} s on {report.device}.")
        say = st.success if report.fine_tuning_helped else st.info if report.fine_tuning_helped is None else st.warning
        say(ui.md_escape(report.verdict))
        for note in report.notes:
            st.caption(ui.md_escape(note))
        st.subheader("Fine-tuned model and baselines")
        st.dataframe(pd.DataFrame(model_rows(report)), hide_index=True, column_config={
            "accuracy": st.column_config.NumberColumn(format="%.3f"),
            "macro F1": st.column_config.NumberColumn(format="%.3f"),
            "log loss": st.column_config.NumberColumn(format="%.3f"),
            "seconds": st.column_config.NumberColumn(format="%.1f")})
        if report.comparison:
            st.markdown(ui.md_escape(report.comparison.describe()))
        st.plotly_chart(figures.models_figure(report.models), key="evaluate.models")
        if report.deployment:
            st.subheader("Deployment, measured on this machine")
            lat = report.deployment.latency
            cols = st.columns(4)
            where = f"on {lat.device}, {lat.dtype}, {lat.image_size} px images" + (
                f"; load average {lat.load_average:.2f} when measured" if lat.load_average is not None else "")
            cols[0].metric("parameters", f"{report.deployment.parameters / 1e6:.2f} M",
                           help="Every parameter of the saved model: pretrained trunk, adapter and head.")
            cols[1].metric("latency per image", milliseconds(lat.latency_ms_batch1),
                           help=f"Median time to classify one image at a time (batch 1), {where}. At batch "
                                f"{lat.batch_size}: {milliseconds(lat.latency_ms_batch)} per image.")
            cols[2].metric(f"images/s, batch {lat.batch_size}", f"{lat.throughput_per_s:,.0f}",
                           help=f"Throughput with batches of {lat.batch_size} images, {where}.")
            cols[3].metric(f"peak memory, batch {lat.batch_size}", f"{lat.peak_memory_mb:,.0f} MiB",
                           help=f"Above the memory with the model loaded; measured as {lat.memory_method}.")
            st.markdown(f"**Latency and memory:** {ui.md_escape(lat.conditions())}.")
            with st.expander("All deployment figures"):
                st.dataframe(pd.DataFrame([(k, str(v)) for k, v in deployment_rows(report.deployment)],
                                          columns=["figure", "value"]), hide_index=True)
        if report.robustness:
            r = report.robustness
            st.subheader("Robustness to corruptions")
            st.markdown(f"Clean accuracy **{r.clean_accuracy:.1%}**, **{r.mean_corrupted_accuracy:.1%}** on average "
                        f"under the corruptions; the largest drop: {r.worst}.")
            st.plotly_chart(figures.robustness_figure(r), key="evaluate.robustness")
        if report.drift:
            d = report.drift
            st.subheader("Second data source (drift)")
            st.markdown(f"On **{ui.md_escape(d.source)}**: accuracy **{d.accuracy:.1%}** (macro F1 "
                        f"{d.macro_f1:.1%}) on {d.n_images} images, against {d.reference_accuracy:.1%} on the run's "
                        f"own {split} split; {d.excluded_overlap} images left out as copies of train/val images"
                        + (f"; unknown classes left out: {ui.md_escape(', '.join(d.unknown_classes))}"
                           if d.unknown_classes else "") + ".")
    return report, snap


# ------------------------------------------------------------------------------------ cost of errors
def costs_tab(result, report):
    """The cost model's widgets and the models' priced errors. Returns the cost model (None when the costs
    entered are not valid)."""
    st.markdown("What the errors cost: a misclassification of class *t* as *p* costs the cost of an error, plus "
                "*t*'s false-negative cost, plus *p*'s false-positive cost. Per class: `5` (every class), "
                "`cat=5,dog=2`, or `1,cat=5` (1 for the others).")
    costs_saved = {"volume": 10_000.0, "error": 1.0, "fp": "", "fn": "", "currency": "",
                   **st.session_state.get(COSTS_SAVED, {})}
    for name, value in costs_saved.items():
        state.seed(f"evaluate.cost.{name}", value)
    cols = st.columns([1, 1, 2, 2, 1])
    cols[0].number_input("Images per month", min_value=0.0, step=1000.0, key="evaluate.cost.volume")
    cols[1].number_input("Cost of any error", min_value=0.0, step=1.0, key="evaluate.cost.error")
    cols[2].text_input("False-positive cost per class", key="evaluate.cost.fp", placeholder="e.g. 1,defect=5",
                       help="The cost of predicting a class wrongly (a false alarm for it).")
    cols[3].text_input("False-negative cost per class", key="evaluate.cost.fn", placeholder="e.g. defect=100",
                       help="The cost of missing a class (an image of it predicted as another).")
    cols[4].text_input("Currency", key="evaluate.cost.currency", placeholder="EUR")
    entered = {name: st.session_state[f"evaluate.cost.{name}"] for name in costs_saved}
    st.session_state[COSTS_SAVED] = entered
    prices = ui.attempt("Reading the costs", cost_model, entered["volume"], entered["error"], entered["fp"],
                        entered["fn"], entered["currency"])
    priced = None
    if prices is not None and report is not None:
        priced = ui.attempt("Pricing the errors", lambda: with_costs(report, prices).costs)
    elif prices is not None:
        priced = ui.attempt("Pricing the errors", error_costs, result.y_true, {FINE_TUNED: result.y_pred},
                            result.classes, prices)
        st.caption("Only the fine-tuned model is priced until the full report has computed the baselines.")
    if priced:
        unit = f" {prices.currency}" if prices.currency else ""
        st.dataframe(pd.DataFrame([{
            "model": c.model, "error rate": c.error_rate, "errors per month": round(c.errors_per_month),
            "cost per image": c.cost_per_image, f"cost per month{unit}": c.cost_per_month,
            "95% interval": f"{c.cost_per_month_interval[0]:,.0f} – {c.cost_per_month_interval[1]:,.0f}"}
            for c in priced]), hide_index=True, column_config={
            "error rate": st.column_config.NumberColumn(format="percent"),
            "errors per month": st.column_config.NumberColumn(
                "errors per month", format="localized", help="Expected: error rate × images per month, rounded."),
            "cost per image": st.column_config.NumberColumn(format="%.3f"),
            f"cost per month{unit}": st.column_config.NumberColumn(format="localized")})
        st.plotly_chart(figures.costs_figure(priced, prices.currency), key="evaluate.costs")
    return prices


# -------------------------------------------------------------------------------- compare two runs
def compare_tab(result, ids: list[str], by_id: dict, run_id: str, split: str, runs_dir: str, run_label,
                evaluation) -> None:
    """A second run of `ids` on the same split (`evaluation`: the page's cached evaluation), metric by metric, and
    whether the two can be told apart."""
    others = [i for i in ids if i != run_id]
    if not others:
        st.caption("Train a second run to compare it with this one.")
    else:
        if st.session_state.get("evaluate.other") not in [None, *others]:
            del st.session_state["evaluate.other"]
        other = st.selectbox("Compare with", others, index=None, key="evaluate.other", placeholder="pick a run",
                             format_func=run_label)
        second = ui.attempt("Evaluating the second run", evaluation, runs_dir, other, split,
                            checkpoint_mtime(by_id[other])) if other else None
        comparison = ui.attempt("Comparing the runs", compare_evaluations, result, second) if second else None
        if comparison is not None:
            frame = pd.DataFrame([{"metric": COMPARISON_LABELS.get(r["metric"], r["metric"]), "a": r["a"],
                                   "b": r["b"], "difference": r["difference"]} for r in comparison.rows])
            st.dataframe(frame, hide_index=True, column_config={
                "a": st.column_config.NumberColumn(f"run {run_id}", format="%.4f"),
                "b": st.column_config.NumberColumn(f"run {other}", format="%.4f"),
                "difference": st.column_config.NumberColumn(f"{other} − {run_id}", format="%+.4f")})
            told_apart = comparison.paired is not None and comparison.paired.method != "no discordant images"
            (st.success if told_apart else st.info)(ui.md_escape(comparison.reason))


# ------------------------------------------------------------------------------------------- export
def export_tab(runs_dir: str, run_id: str, split: str, report, snap, prices) -> None:
    """The finished report (`snap` its task) written as HTML, JSON and CSV, with `prices` when valid; downloads."""
    folder = default_report_dir(runs_dir, run_id, split)
    if report is None:
        st.info("Build the full report first (the Full report tab); the export holds all of it.")
    else:
        st.markdown(f"A self-contained HTML report (it opens offline), and the metrics as JSON and CSV, written to "
                    f"`{folder}`" + (" with the costs entered above." if prices is not None else "."))
        if st.button("Write the report files", type="primary", key="evaluate.export"):
            written = ui.attempt("Writing the report", write_report, with_costs(report, prices) if prices else report,
                                 folder)
            if written is not None:
                st.session_state[EXPORTED] = {"task": snap.task_id, "files": written.files}
        exported = st.session_state.get(EXPORTED)
        if exported and exported["task"] == snap.task_id:
            cols = st.columns(3)
            for col, (kind, path) in zip(cols, exported["files"].items()):
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        col.download_button(f"Download {os.path.basename(path)}", f.read(),
                                            file_name=f"run-{run_id}-{os.path.basename(path)}",
                                            mime={"html": "text/html", "json": "application/json",
                                                  "csv": "text/csv"}[kind], key=f"evaluate.download.{kind}",
                                            on_click="ignore")
            st.caption(f"Written to {folder}.")
