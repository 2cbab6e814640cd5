"""6 · Evaluate: a run's best model on its held-out split. At once: headline metrics with 95% intervals against
the linear probe, the confusion matrix (click a cell to see its images), per-class scores, calibration and the
error analysis. In the background: the full report (baselines side by side, McNemar's test, deployment,
robustness, drift). Then the cost of errors, a second run compared image by image, and the export."""
import os

import streamlit as st

from core.evaluate import evaluate_run
from core.runs import FINISHED
from core.runtime import default_device
from pages import state, ui
from pages.evaluate_tabs import (
    checkpoint_mtime,
    compare_tab,
    confusion_tab,
    costs_tab,
    export_tab,
    per_class_tab,
    report_tab,
)

ui.through_app(__file__)

# --- session keys: widget keys are "evaluate.*" (the tabs' in pages/evaluate_tabs.py); the "…saved" keys outlive
# a visit to another page
RUN_SAVED = "evaluate.run.saved"  # dict(watched, run): the run picked here while ui.RUN was `watched`
SPLIT_SAVED = "evaluate.split.saved"


@st.cache_data(max_entries=8, show_spinner="Evaluating the best checkpoint…")
def evaluation(runs_dir: str, run_id: str, split: str, checkpoint_mtime: float):
    """Cached per checkpoint version: a resumed run that writes a new best model is evaluated again."""
    return evaluate_run(runs_dir, run_id, split, device=default_device())


def kept(key: str, saved: str, default):
    """Seed widget `key` from what this session last chose (Streamlit drops a widget's state on other pages)."""
    state.seed(key, st.session_state.get(saved, default))


st.title("6 · Evaluate")
manager = ui.job_manager()
runs_dir = manager.store.runs_dir
# finished, stopped, and failed runs that kept a best checkpoint before failing: all can be evaluated
runs = [r for r in manager.visible_runs(ui.user()) if r["best_checkpoint"] and os.path.exists(r["best_checkpoint"])
        and (r["status"] in FINISHED or r["status"] in ("stopped", "failed"))]
if not runs:
    st.info("No finished run yet: train one first. Evaluation uses the run's best checkpoint on its test split, "
            "images the model never saw while training.")
    st.page_link("pages/train.py", label="Train", icon=ui.PAGES["pages/train.py"].icon)
    ui.stop_page()

ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
watched = st.session_state.get(ui.RUN)
saved = st.session_state.get(RUN_SAVED) or {}
# the run picked here, unless another run has been watched (trained, resumed) since: then that one
preferred = saved.get("run") if saved.get("watched") == watched else watched
state.seed("evaluate.run", preferred if preferred in ids else ids[0])
if st.session_state["evaluate.run"] not in ids:
    st.session_state["evaluate.run"] = ids[0]


def run_label(i: str) -> str:
    return f"{i} · {by_id[i]['model']} · {by_id[i]['status']}"


left, right = st.columns([3, 2])
run_id = left.selectbox("Run", ids, key="evaluate.run", format_func=run_label)
st.session_state[RUN_SAVED] = {"watched": watched, "run": run_id}
kept("evaluate.split", SPLIT_SAVED, "test")
split = right.radio("Split", ["test", "val"], horizontal=True, key="evaluate.split",
                    help="test: held out until now, the honest score. val: used to pick the best epoch.")
st.session_state[SPLIT_SAVED] = split
mtime = checkpoint_mtime(by_id[run_id])
result = ui.attempt("Evaluating the run", evaluation, runs_dir, run_id, split, mtime)
if result is None:
    ui.stop_page()

# --- headline numbers
outcome = (by_id[run_id].get("summary") or {}).get("outcome") or {}
is_probe = outcome.get("kept") == "linear probe"
cols = st.columns(5)
for col, key in zip(cols, ("accuracy", "macro_f1", "macro_precision", "macro_recall")):
    base = result.baseline.get(f"{split}_{key}")
    label = f"{split} {key.replace('_', ' ')}" + (" (the probe)" if is_probe else "")
    if is_probe:
        col.metric(label, f"{result.metrics[key]:.1%}", "the linear probe itself", delta_color="off", delta_arrow="off")
    elif base is None:
        col.metric(label, f"{result.metrics[key]:.1%}")
    elif abs(result.metrics[key] - base) < 0.0005:  # shown as +0.0% or -0.0%: no gain, so neither green nor red
        col.metric(label, f"{result.metrics[key]:.1%}", "same as the linear probe", delta_color="off",
                   delta_arrow="off")
    else:
        col.metric(label, f"{result.metrics[key]:.1%}", f"{result.metrics[key] - base:+.1%} vs. linear probe")
cols[4].metric("log loss", f"{result.metrics['log_loss']:.3f}")
intervals = ", ".join(f"{name.replace('_', ' ')} {lo:.3f}–{hi:.3f}" for name, (lo, hi) in result.intervals.items())
st.caption(f"{result.n_images} {split} images. 95% bootstrap intervals: {intervals}. "
           + ("The linear probe is the baseline every run records first: the frozen pretrained model with only a "
              "linear classifier fitted on its features. Fine-tuning should beat it." if result.baseline else ""))
if outcome.get("sentence"):
    (st.warning if is_probe else st.info)(ui.md_escape(outcome["sentence"]))
for item in (by_id[run_id].get("summary") or {}).get("advice", ()):  # may name classes
    st.caption(f"**Advice ({item['code'].replace('_', ' ')}):** {ui.md_escape(item['message'])}. "
               f"{ui.md_escape(item['action'])}")
cols = st.columns(5)
for col, k in zip(cols, (3, 5)):
    if f"top{k}_accuracy" in result.metrics:
        col.metric(f"top-{k} accuracy", f"{result.metrics[f'top{k}_accuracy']:.1%}")
cols[2].metric("calibration error (ECE)", f"{result.metrics['ece']:.3f}",
               help="Expected calibration error: how far the model's confidence is from its accuracy (0 is perfect).")
cols[3].metric("misclassified", f"{len(result.misclassified)}")

tabs = st.tabs(["Confusion matrix and errors", "Per class and calibration", "Full report", "Cost of errors",
                "Compare two runs", "Export"])

with tabs[0]:
    confusion_tab(result)
with tabs[1]:
    per_class_tab(result)
with tabs[2]:
    report, snap = report_tab(manager.tasks, runs_dir, run_id, split, mtime)
with tabs[3]:
    prices = costs_tab(result, report)
with tabs[4]:
    compare_tab(result, ids, by_id, run_id, split, runs_dir, run_label, evaluation)
with tabs[5]:
    export_tab(runs_dir, run_id, split, report, snap, prices)
