"""7 · Predict: try a model on new images. Pick a registry model (name@alias or name:version) or a run, drop one or
many images: each gets its predicted class, its top-5 probabilities and where the model looked (a saliency overlay),
and a "this is wrong" control that records the right label in the prediction log (core.deploy.predictor). Each
image is predicted, and logged, once per model version: reruns show the kept result."""
import hashlib
import os
import threading

import streamlit as st
from PIL import Image

from core.deploy.predictor import RUN_PREFIX, Predictor
from core.workspace import Workspace
from pages import charts, state, ui
from pages import deploy_parts as parts

ui.through_app(__file__)

RESULTS = "predict.results"  # {"<pinned ref>|<sha256>": Prediction.to_dict()}: what each image got, once
FEEDBACK = "predict.feedback"  # {prediction id: the right label}: feedback recorded in this session
KEEP_RESULTS = 200
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]
SHOWN_PX = 224  # the saliency overlay is drawn at the network's input size: shown at least this wide


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def loaded(root: str, pinned: str, stamp: float) -> tuple[Predictor, threading.Lock]:
    """One Predictor per model version (`stamp`: the registry version, or the run checkpoint's mtime, so a moved
    alias or a resumed run loads again), and a lock: saliency hooks the shared PyTorch model."""
    return Predictor(Workspace(root), pinned), threading.Lock()


@st.cache_data(max_entries=64, show_spinner="Finding where the model looked…")
def where_it_looked(root: str, pinned: str, stamp: float, sha256: str, _data: bytes) -> tuple[Image.Image, str]:
    model, lock = loaded(root, pinned, stamp)
    with lock:
        saliency = model.explain(_data)
    overlay = saliency.overlay()
    if overlay.width < SHOWN_PX:
        overlay = overlay.resize((SHOWN_PX, SHOWN_PX * overlay.height // overlay.width), Image.Resampling.BILINEAR)
    return overlay, saliency.method


def pin(ref: str, runs: dict[str, dict]) -> tuple[str, float]:
    """The model version `ref` names now, as a ref that stays on it, and a stamp that changes with it."""
    if ref.startswith(RUN_PREFIX):
        checkpoint = runs[ref[len(RUN_PREFIX):]]["best_checkpoint"]
        return ref, os.path.getmtime(checkpoint)
    version = parts.registry(root).resolve(ref)
    return f"{version.name}:{version.version}", float(version.version)


def predict_once(model: Predictor, lock: threading.Lock, pinned: str, name: str, data: bytes) -> dict | None:
    """The image's prediction by this version: made (and logged) on the first run, kept for the reruns. A file
    that is not a usable image shows its error (nothing is logged) and gives None."""
    results = st.session_state.setdefault(RESULTS, {})
    key = f"{pinned}|{hashlib.sha256(data).hexdigest()}"
    if key not in results:
        with lock:
            made = ui.attempt(f"Predicting {name}", model.predict, [(name, data)])
        if made is None:
            return None
        results[key] = made[0].to_dict()
        for old in list(results)[:-KEEP_RESULTS]:
            del results[old]
    return results[key]


def feedback_control(model: Predictor, lock: threading.Lock, p: dict) -> None:
    """"This is wrong": the right label (one of the model's other classes) and a comment, into the log."""
    given = st.session_state.setdefault(FEEDBACK, {})
    if p["id"] in given:
        st.success(f"Feedback recorded: the right label is **{ui.md_escape(given[p['id']])}**.")
    others = [c for c in model.classes if c != p["predicted"]]
    with st.expander("This is wrong — the right label is …"), st.form(f"predict.feedback.{p['id']}", border=False):
        label = st.selectbox("The right label", others, key=f"predict.label.{p['id']}")
        comment = st.text_input("Comment (optional)", key=f"predict.comment.{p['id']}")
        if st.form_submit_button("Record the right label"):
            with lock:
                recorded = ui.attempt("Recording the feedback", model.feedback, p["id"], label, comment)
            if recorded is not None:
                given[p["id"]] = recorded["label"]
                st.rerun()


def show(model: Predictor, lock: threading.Lock, pinned: str, stamp: float, p: dict, data: bytes) -> None:
    with st.container(border=True):
        image, looked, result = st.columns([2, 2, 3])
        image.image(data, caption=ui.md_escape(f"{p['name']} ({p['width']}×{p['height']} px)"), width="stretch")
        overlay = ui.attempt("Finding where the model looked", where_it_looked, root, pinned, stamp,
                             hashlib.sha256(data).hexdigest(), data)
        if overlay is not None:
            looked.image(overlay[0], width="stretch",
                         caption=f"Where the model looked for {ui.md_escape(p['predicted'])}: "
                                 f"{ui.md_escape(overlay[1])}, red strongest, on the crop the model saw")
        with result:
            st.markdown(f"#### {ui.md_escape(p['predicted'])}")
            st.caption(f"{p['confidence']:.1%} confident · {ui.md_escape(p['model'])}"
                       + (f" version {p['version']}" if p["version"] else "") + f" · {p['latency_ms']:.1f} ms",
                       help=f"Prediction {p['id']} in the prediction log")
            st.plotly_chart(charts.top_k_figure(p["top_k"]), key=f"predict.top.{p['id']}",
                            config={"displayModeBar": False})
            feedback_control(model, lock, p)


st.title("7 · Predict")
root = ui.workspace().root
manager = ui.job_manager()
runs = {r["id"]: r for r in parts.exportable_runs(manager, ui.user())}
reg = ui.attempt("Reading the registry", parts.registry, root)
choices = {**parts.registry_refs(reg),
           **{f"{RUN_PREFIX}{i}": f"run {i} · {r['model']} (its PyTorch checkpoint, not exported)"
              for i, r in runs.items()}}
if not choices:
    st.info("No model yet. Train a run (Train page), then export and register it on the Deploy page: its "
            "registered versions and their aliases (such as digits@champion) are offered here, and so are the "
            "finished runs themselves.")
    st.page_link("pages/deploy.py", label="Deploy", icon=ui.PAGES["pages/deploy.py"].icon)
    ui.stop_page()

state.seed("predict.model", next(iter(choices)))
if st.session_state["predict.model"] not in choices:
    st.session_state["predict.model"] = next(iter(choices))
ref = st.selectbox("Model", list(choices), key="predict.model", format_func=choices.get,
                   help="A registry alias follows the version it names now; name:N stays on version N.")
pinned_stamp = ui.attempt("Finding the model", pin, ref, runs)
if pinned_stamp is None:
    ui.stop_page()
pinned, stamp = pinned_stamp
loaded_model = ui.attempt("Loading the model", loaded, root, pinned, stamp)
if loaded_model is None:
    ui.stop_page()
model, lock = loaded_model
st.caption(f"Predicting with {ui.md_escape(model.source)}: {len(model.classes)} classes. Every prediction is "
           "written to the workspace's prediction log with the feedback you give (the Deploy page lists them).")

files = st.file_uploader("Images", type=IMAGE_TYPES, accept_multiple_files=True, key="predict.files",
                         help="One or many images (PNG, JPEG, BMP, GIF, TIFF, WebP); drop them here.")
if not files:
    st.caption("Drop one or more images above to see what the model makes of them.")
for upload in files or ():
    data = upload.getvalue()
    prediction = predict_once(model, lock, pinned, upload.name, data)
    if prediction is not None:
        show(model, lock, pinned, stamp, prediction, data)
