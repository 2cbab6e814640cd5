"""1 · Models: the backbone catalog, license warnings, the candidates to try, a bake-off of them on the user's
images (a background task: core.plan.bakeoff through the process-wide TaskManager), and the user's own weights."""
import pandas as pd
import streamlit as st

from core.data import demo_dataset, list_datasets
from core.evaluate import bakeoff_figure
from core.model import (
    CHECKPOINT_SUFFIXES,
    DEFAULT_MODEL,
    PARAMS_NOTE,
    add_checkpoint,
    license_warning,
    list_catalog,
    resolve_entry,
)
from core.plan import format_seconds
from core.plan.bakeoff import (
    DEFAULT_MAX_IMAGES,
    BakeoffError,
    BakeoffOptions,
    bakeoff,
    parameters_text,
    result_rows,
    task_key,
    with_random_floor,
)
from pages import state, ui

ui.through_app(__file__)

st.title("1 · Choose a pretrained model")
st.write("Each model below was trained on ImageNet photos; fine-tuning reuses what it learned. Bigger models "
         "(more parameters, higher ImageNet top-1) usually transfer better but train slower. "
         f"**{DEFAULT_MODEL}** is small, accurate and works offline: keep it if unsure.")

check_hub = st.toggle("Check the model hubs over the network", help="Models marked not available need a download "
                      "from the Hugging Face or PyTorch hub; this checks whether the hub can be reached.")
rows = ui.attempt("Reading the model catalog", list_catalog, check_hub=check_hub) or []
catalog = pd.DataFrame(rows)
if not catalog.empty:
    st.dataframe(
        catalog[["name", "params_m", "input_size", "imagenet_top1", "license", "pretraining", "available",
                 "availability"]],
        hide_index=True,
        column_config={
            "name": "model",
            "params_m": st.column_config.NumberColumn("params (M, with head)", format="%.1f",
                                                      help=f"Parameters of the published model, {PARAMS_NOTE}"),
            "input_size": st.column_config.NumberColumn("input (px)"),
            "imagenet_top1": st.column_config.NumberColumn("ImageNet top-1 %", format="%.1f"),
            "pretraining": "pretraining data", "available": st.column_config.CheckboxColumn("available now"),
            "availability": "where the weights come from"})
    st.caption(f"Parameters here are the published models', {PARAMS_NOTE}. The bake-off below counts the trunk "
               "only, without any head, so its figures are smaller: fine-tuning keeps the trunk and puts a new "
               "head for your classes on it.")

# --- candidates
extra = st.session_state.setdefault(ui.EXTRA_MODELS, [])
options = list(dict.fromkeys([*catalog.get("name", pd.Series(dtype=str)).tolist(), *extra]))
# first visit: the model to train and the models available offline, so the bake-off below is one click away
offline = [r["name"] for r in rows if r.get("available")][:3]
first = list(dict.fromkeys([ui.current_model(), *offline]))
if ui.CANDIDATES in st.session_state:  # models that left the catalog (or an extra name this session lost)
    st.session_state[ui.CANDIDATES] = [m for m in st.session_state[ui.CANDIDATES] if m in options]
candidates = st.multiselect("Candidates to try", options,
                            **state.mirrored("models.candidates", ui.CANDIDATES, [m for m in first if m in options][:5]),
                            help="Pick one or more. The bake-off below ranks 2 to 5 of them on your images in about a "
                            "minute; or train each on the Train page and compare them on Runs.")


def _add_model() -> None:
    """Look a typed name up (timm / torchvision) and add it to the candidates; runs before the widgets."""
    name = st.session_state.get("models.extra_name", "").strip()
    try:
        entry = resolve_entry(name)
    except (LookupError, ValueError) as exc:
        st.session_state["models.add_error"] = str(exc)
        return
    added = st.session_state.setdefault(ui.EXTRA_MODELS, [])
    if entry.name not in added:
        added.append(entry.name)
    st.session_state[ui.CANDIDATES] = list(dict.fromkeys([*st.session_state.get(ui.CANDIDATES, []), entry.name]))


with st.expander("Another timm or torchvision model, by name", expanded="models.add_error" in st.session_state):
    st.text_input("Model name", key="models.extra_name",
                  placeholder="e.g. resnet34.a1_in1k or torchvision/mobilenet_v3_small",
                  help="Any pretrained timm name, or torchvision/<name>. It needs the hub to download weights.")
    st.button("Add it", on_click=_add_model)
    if "models.add_error" in st.session_state:
        st.error(f"**Adding the model failed.** {ui.md_escape(st.session_state.pop('models.add_error'))}")

available = {r["name"]: r for r in rows}
for model in candidates:  # a typed name ("torchvision/<anything>") is the user's: shown as text
    entry = ui.attempt(f"Looking up {model!r}", resolve_entry, model)
    warning = license_warning(entry.license) if entry else None
    if warning:
        st.warning(f"**{ui.md_escape(model)}**: {warning}")
    row = available.get(model)
    if row is not None and not row["available"]:
        st.warning(f"**{ui.md_escape(model)}**: {ui.md_escape(row['availability'])}. Without the network it "
                   "cannot be trained here; "
                   "the offline EfficientNet-Lite models always can.")

# --- the bake-off: the candidates ranked on the user's own images, on a background thread
BAKEOFF = "bakeoff"  # the task kind
POLL_EVERY = 1.0  # seconds between progress updates while it runs
SIZES = (0, 32, 64, 96, 128, 160, 224)  # 0: each model's own input size
tasks = ui.job_manager().tasks


def _use_for_training(name: str) -> None:
    """Make `name` the model to train, and one of the candidates (runs before the widgets are drawn)."""
    st.session_state[ui.MODEL] = name
    extra = st.session_state.setdefault(ui.EXTRA_MODELS, [])
    if name not in options and name not in extra:
        extra.append(name)
    st.session_state[ui.CANDIDATES] = list(dict.fromkeys([*st.session_state.get(ui.CANDIDATES, []), name]))
    st.session_state["models.bakeoff_used"] = name


def bakeoff_settings(dataset_id: str) -> tuple[BakeoffOptions | None, str]:
    """The bake-off the widgets describe, or None and why not (shown as a message, nothing runs)."""
    # each setting's value lives in a plain key (state.mirrored): a polling fragment's reruns reset the widgets'
    # own state, and the bake-off then looked like one for another choice
    floor = st.checkbox(f"Include {ui.md_escape((candidates or [DEFAULT_MODEL])[0])} with random weights as a floor",
                        **state.mirrored("models.bakeoff_floor", "models.bakeoff.floor", True),
                        help="The first candidate's architecture without its ImageNet weights: the gap between it and "
                             "the pretrained candidates is what pretraining buys on your images.")
    left, right = st.columns(2)
    max_images = left.number_input("Images to use (at most)", 20, 100_000, step=100,
                                   **state.mirrored("models.bakeoff_max_images", "models.bakeoff.max_images",
                                                 DEFAULT_MAX_IMAGES),
                                   help="A stratified subset of the training and validation images. More images "
                                        "give narrower intervals and take longer.")
    size = right.selectbox("Image size", SIZES, **state.mirrored("models.bakeoff_size", "models.bakeoff.size", 128),
                           format_func=lambda s: "each model's own" if s == 0 else f"{s} px",
                           help="The side every candidate sees. Smaller is much faster on a CPU (time grows with the "
                                "square of the side) and ranks the candidates well for small images; their own size "
                                "(224 px and more) is closer to how they will be trained, but takes many times "
                                "longer. Latency is measured at this size too.")
    try:
        models = with_random_floor(candidates, include=floor)
    except BakeoffError as exc:
        return None, str(exc)[0].upper() + str(exc)[1:] + "."
    return BakeoffOptions(models, max_images=int(max_images), image_size=size or None), ""


def show_bakeoff(result, current: bool) -> None:
    """The chart, the table, the recommendation and the buttons that pick the model to train."""
    if not current:
        st.caption(f"These results are for an earlier choice "
                   f"({ui.md_escape(', '.join(c.name for c in result.candidates))}); "
                   "run the bake-off again for the current one.")
    st.plotly_chart(bakeoff_figure(result), key="bakeoff_chart")
    table = pd.DataFrame(result_rows(result))
    table["interval"] = [f"{lo:.1%} – {hi:.1%}" for lo, hi in zip(table.val_accuracy_low, table.val_accuracy_high)]
    st.dataframe(
        table[["candidate", "val_accuracy", "interval", "macro_f1", "knn_accuracy", "params_m", "params_with_head_m",
               "latency_ms_batch1", "latency_ms_batch", "throughput_per_s", "peak_memory_mb", "seconds"]],
        hide_index=True, key="bakeoff_table",
        column_config={
            "val_accuracy": st.column_config.NumberColumn("val accuracy", format="percent",
                                                          help="Logistic regression on the frozen features"),
            "interval": st.column_config.TextColumn("95% interval", help="Bootstrap over the validation images"),
            "macro_f1": st.column_config.NumberColumn("macro-F1", format="%.3f"),
            "knn_accuracy": st.column_config.NumberColumn("k-NN accuracy", format="percent"),
            "params_m": st.column_config.NumberColumn("trunk params (M)", format="%.1f",
                                                      help="Without any classifier head: what fine-tuning keeps"),
            "params_with_head_m": st.column_config.NumberColumn(
                "with ImageNet head (M)", format="%.1f",
                help=f"The catalog's figure: the published model, {PARAMS_NOTE}"),
            "latency_ms_batch1": st.column_config.NumberColumn("ms/image, batch 1", format="%.1f"),
            "latency_ms_batch": st.column_config.NumberColumn(f"ms/image, batch {result.latency_batch}", format="%.1f"),
            "throughput_per_s": st.column_config.NumberColumn("images/s", format="%.0f"),
            "peak_memory_mb": st.column_config.NumberColumn("peak memory (MiB)", format="%.0f"),
            "seconds": st.column_config.NumberColumn("seconds", format="%.1f",
                                                     help="Loading, features and fitting (not the latency timing)")})
    size = f"{result.image_size} px" if result.image_size else "each model's own size"
    st.caption(f"{result.n_train:,} training and {result.n_val:,} validation images at {size}, frozen features. "
               f"Took {format_seconds(result.seconds)}.")
    conditions = result.latency_conditions or f"measured on {result.device} ({result.dtype}), in the page's process"
    (st.warning if result.latency_contended else st.caption)(
        f"**Latency and memory:** {ui.md_escape(conditions)}; memory: {ui.md_escape(result.memory_method)}.")
    st.caption("Parameters: " + "; ".join(f"{ui.md_escape(c.name)} {ui.md_escape(parameters_text(c))}"
                                          for c in result.candidates if c.pretrained) + ".")
    for note in result.notes:
        st.caption(ui.md_escape(note))
    trainable = [c.name for c in result.candidates if c.pretrained]  # random weights are a floor, not a choice
    if not trainable:
        return
    recommended = result.recommendation if result.recommendation in trainable else trainable[0]
    st.success(f"**Recommended: {ui.md_escape(recommended)}.** {ui.md_escape(result.reason)}")
    left, right = st.columns([2, 3], vertical_alignment="bottom")
    left.button(f"Use {ui.md_escape(recommended)} for training", type="primary", on_click=_use_for_training,
                args=(recommended,))
    others = [name for name in trainable if name != recommended]
    if others:
        with right:
            other = st.selectbox("Or another candidate", others, key="models.bakeoff_other")
            st.button(f"Use {ui.md_escape(other)} instead", on_click=_use_for_training, args=(other,))


@st.fragment(run_every=POLL_EVERY)
def bakeoff_progress(task_id: str) -> None:
    """Progress while it runs (the rest of the page stays usable); the whole page again when it ends."""
    snap = tasks.snapshot(task_id)
    if snap is None or not snap.active:
        st.rerun()
    st.info(f"**Running: {ui.md_escape(snap.label)}.** {ui.md_escape(snap.message[:1].upper() + snap.message[1:])} · "
            f"{format_seconds(snap.seconds)} elapsed")
    st.caption("It runs in the background: use the other pages meanwhile, the results wait here.")


st.subheader("Compare candidates on your data")
st.write("Before training, rank the candidates on a sample of your own images: each one's frozen features with a "
         "linear classifier (and k-NN), scored on validation images with a 95% interval, and the latency and "
         "memory each would cost on this machine. When the intervals overlap, the smaller model is recommended.")
dataset_id = st.session_state.get(ui.DATASET)
if not dataset_id:
    root = ui.workspace().root
    stored = ui.visible_datasets(list_datasets(root))
    st.info("No dataset loaded yet. The bake-off ranks the candidates on your own labelled images, which are "
            "loaded in step 2: try it here on the demo data in one click"
            + (", or on a dataset stored in this workspace" if stored else "")
            + ", or load your images on the Dataset page and come back (the candidates you picked stay picked).")
    left, middle, right = st.columns(3, vertical_alignment="bottom")
    if left.button("Use the demo dataset", help="Handwritten digits (scikit-learn's, 10 classes)"):
        with st.spinner("Loading the demo dataset (about 15 s the first time)..."):
            demo = ui.attempt("Loading the demo dataset", demo_dataset, root)
        if demo is not None:
            ui.attempt("Recording the dataset's owner", ui.dataset_owners().record, demo.dataset_id, ui.user().name)
            st.session_state[ui.DATASET] = demo.dataset_id
            st.rerun()
    if stored:
        with middle:
            pick = st.selectbox("A stored dataset", stored, key="models.stored_dataset",
                                format_func=lambda d: ui.dataset_name(root, d))
            if st.button("Use this dataset"):
                st.session_state[ui.DATASET] = pick
                st.rerun()
    right.page_link("pages/dataset.py", label="Load your own images (step 2)", icon=ui.PAGES["pages/dataset.py"].icon)
else:
    bakeoff_options, problem = bakeoff_settings(dataset_id)
    split_config = ui.current_config()  # the bake-off splits the data as training will
    key = task_key(dataset_id, bakeoff_options, split_config) if bakeoff_options else None
    # this choice's bake-off (also one started in another tab), else the one this session ran last
    snap = (tasks.latest(BAKEOFF, key, owner=ui.user().name) if key else None) or tasks.snapshot(st.session_state.get("models.bakeoff_task", ""))
    running = [s for s in tasks.active() if s.kind == BAKEOFF]
    if problem:
        st.info(ui.md_escape(problem))
    else:
        st.caption("Compares " + ", ".join(f"**{ui.md_escape(m)}**" for m in bakeoff_options.models) + ".")
    if running and not (snap and snap.active):
        st.caption(f"Another bake-off is running ({ui.md_escape(running[0].label)}); a second one would share this "
                   "machine.")
    this_running = snap is not None and snap.active and snap.key == key
    if st.button("Run the bake-off" if not (snap and snap.key == key) else "Run the bake-off again",
                 disabled=bakeoff_options is None or this_running) and bakeoff_options is not None:
        label = (f"bake-off of {len(bakeoff_options.models)} candidates on "
                 f"{ui.dataset_name(ui.workspace().root, dataset_id)}")
        task_id = tasks.submit(BAKEOFF, key, label, bakeoff, dataset_id, bakeoff_options, ui.workspace().root,
                               config=split_config, owner=ui.user().name)
        st.session_state["models.bakeoff_task"] = task_id  # a second click finds the running one, starts nothing
        snap = tasks.snapshot(task_id)
    if snap is not None and snap.active:
        bakeoff_progress(snap.task_id)
    elif snap is not None and snap.status == "failed":
        st.error(f"**The bake-off failed.** {ui.md_escape(snap.error)}")
    elif snap is not None:
        show_bakeoff(snap.result, current=snap.key == key)
    if "models.bakeoff_used" in st.session_state:
        used = ui.md_escape(st.session_state.pop("models.bakeoff_used"))
        st.success(f"**{used}** is now the model to train (see below; the "
                   "Configure and Train pages use it).")

if candidates:
    current = ui.current_model() if ui.current_model() in candidates else candidates[0]
    chosen = st.radio("Train with", candidates, index=candidates.index(current), horizontal=True,
                      format_func=ui.md_escape)  # radio options render Markdown
    st.session_state[ui.MODEL] = chosen
else:
    st.info(f"No candidate picked: training uses {DEFAULT_MODEL}.")
    st.session_state[ui.MODEL] = DEFAULT_MODEL

# --- the user's own weights
st.subheader("Your own weights (optional)")
st.write("Start from a checkpoint you trained elsewhere instead of the ImageNet weights: a `.safetensors` "
         "file, or a weights-only `.pt`/`.pth` (`torch.save(model.state_dict(), path)`). It must match one of "
         "the architectures above; pickled objects other than tensors are refused.")
arch = st.selectbox("Architecture of the checkpoint", candidates or [DEFAULT_MODEL])
upload = st.file_uploader("Checkpoint file", type=[s.lstrip(".") for s in CHECKPOINT_SUFFIXES])
if st.button("Check and use these weights", disabled=upload is None):
    check = ui.attempt("Checking the checkpoint", add_checkpoint, upload, upload.name, arch, ui.workspace().root)
    if check is not None:
        st.session_state[ui.CHECKPOINT] = {"model": check.model, "path": check.path, "name": upload.name}
        st.session_state[ui.MODEL] = check.model
        st.success(ui.md_escape(check.message))  # it names the uploaded file
ckpt = ui.current_checkpoint()
if ckpt:
    st.info(f"Training **{ui.md_escape(ckpt['model'])}** starts from your weights **{ui.md_escape(ckpt['name'])}**.")
    if st.button("Use the pretrained weights instead"):
        del st.session_state[ui.CHECKPOINT]
        st.rerun()

st.page_link("pages/dataset.py", label="Next: load your images", icon=":material/arrow_forward:")
