"""6 · Evaluate: a run's best model on its held-out split: headline metrics against the linear-probe baseline,
the confusion matrix, per-class precision/recall/F1, and the most confident mistakes."""
import os

import pandas as pd
import streamlit as st

from core.compare import FINISHED
from core.estimate import default_device
from core.evaluate import evaluate_run
from pages import charts, ui


@st.cache_data(max_entries=8, show_spinner="Evaluating the best checkpoint…")
def evaluation(runs_dir: str, run_id: str, split: str, checkpoint_mtime: float):
    """Cached per checkpoint version: a resumed run that writes a new best model is evaluated again."""
    return evaluate_run(runs_dir, run_id, split, device=default_device())


st.title("6 · Evaluate")
manager = ui.job_manager()
runs = [r for r in manager.store.list_runs() if r["best_checkpoint"] and (r["status"] in FINISHED or
                                                                          r["status"] == "stopped")]
if not runs:
    st.info("No finished run yet: train one first. Evaluation uses the run's best checkpoint on its test split, "
            "images the model never saw while training.")
    st.page_link("pages/train.py", label="Train", icon=":material/monitoring:")
    st.stop()

ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
current = st.session_state.get(ui.RUN)
run_id = st.selectbox("Run", ids, index=ids.index(current) if current in ids else 0,
                      format_func=lambda i: f"{i} · {by_id[i]['model']} · {by_id[i]['status']}")
split = st.radio("Split", ["test", "val"], horizontal=True,
                 help="test: held out until now, the honest score. val: used to pick the best epoch.")
checkpoint = by_id[run_id]["best_checkpoint"]
mtime = os.path.getmtime(checkpoint) if os.path.exists(checkpoint) else 0.0
result = ui.attempt("Evaluating the run", evaluation, manager.store.runs_dir, run_id, split, mtime)
if result is None:
    st.stop()

cols = st.columns(5)
for col, key in zip(cols, ("accuracy", "macro_f1", "macro_precision", "macro_recall")):
    base = result.baseline.get(f"{split}_{key}")
    col.metric(f"{split} {key.replace('_', ' ')}", f"{result.metrics[key]:.1%}",
               f"{result.metrics[key] - base:+.1%} vs. linear probe" if base is not None else None)
cols[4].metric("log loss", f"{result.metrics['log_loss']:.3f}")
if result.baseline:
    st.caption("The linear probe is the baseline every run records first: the frozen pretrained model with only "
               "a linear classifier fitted on its features. Fine-tuning should beat it.")

left, right = st.columns([3, 2])
with left:
    normalized = st.toggle("Show shares of each true class", value=True)
    st.plotly_chart(charts.confusion_figure(result.classes, result.confusion_normalized if normalized
                                            else result.confusion, normalized), key="confusion")
with right:
    st.markdown("**Per class**")
    st.dataframe(pd.DataFrame(result.per_class), hide_index=True, column_config={
        "precision": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
        "recall": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
        "f1": st.column_config.ProgressColumn("F1", format="percent", min_value=0, max_value=1)})

st.subheader(f"Misclassified images ({len(result.misclassified)})")
if result.misclassified:
    st.caption("The most confident mistakes first: look for wrong labels, ambiguous images, or a class the model "
               "confuses systematically.")
    shown = result.misclassified[:16]
    st.image([m["path"] for m in shown], width=96,
             caption=[f"{m['true']} → {m['predicted']} ({m['confidence']:.0%})" for m in shown])
else:
    st.success("No mistakes on this split.")
