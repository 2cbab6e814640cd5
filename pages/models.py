"""1 · Models: the backbone catalog, license warnings, the candidates to try, and the user's own weights."""
import pandas as pd
import streamlit as st

from core.catalog import DEFAULT_MODEL, list_catalog, resolve_entry
from core.licenses import license_warning
from core.uploads import CHECKPOINT_SUFFIXES, add_checkpoint
from pages import ui

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
            "name": "model", "params_m": st.column_config.NumberColumn("params (M)", format="%.1f"),
            "input_size": st.column_config.NumberColumn("input (px)"),
            "imagenet_top1": st.column_config.NumberColumn("ImageNet top-1 %", format="%.1f"),
            "pretraining": "pretraining data", "available": st.column_config.CheckboxColumn("available now"),
            "availability": "where the weights come from"})

# --- candidates
extra = st.session_state.setdefault(ui.EXTRA_MODELS, [])
options = list(dict.fromkeys([*catalog.get("name", pd.Series(dtype=str)).tolist(), *extra]))
ui.seed("models.candidates", [m for m in st.session_state.get(ui.CANDIDATES, [ui.current_model()]) if m in options])
candidates = st.multiselect("Candidates to try", options, key="models.candidates",
                            help="Pick one or more; train each on the Train page and compare them on Runs.")
st.session_state[ui.CANDIDATES] = candidates


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
    st.session_state["models.candidates"] = list(dict.fromkeys([*st.session_state["models.candidates"], entry.name]))


with st.expander("Another timm or torchvision model, by name", expanded="models.add_error" in st.session_state):
    st.text_input("Model name", key="models.extra_name",
                  placeholder="e.g. resnet34.a1_in1k or torchvision/mobilenet_v3_small",
                  help="Any pretrained timm name, or torchvision/<name>. It needs the hub to download weights.")
    st.button("Add it", on_click=_add_model)
    if "models.add_error" in st.session_state:
        st.error(f"**Adding the model failed.** {st.session_state.pop('models.add_error')}")

available = {r["name"]: r for r in rows}
for model in candidates:
    entry = ui.attempt(f"Looking up {model!r}", resolve_entry, model)
    warning = license_warning(entry.license) if entry else None
    if warning:
        st.warning(f"**{model}**: {warning}")
    row = available.get(model)
    if row is not None and not row["available"]:
        st.warning(f"**{model}**: {row['availability']}. Without the network it cannot be trained here; "
                   "the offline EfficientNet-Lite models always can.")

if candidates:
    current = ui.current_model() if ui.current_model() in candidates else candidates[0]
    chosen = st.radio("Train with", candidates, index=candidates.index(current), horizontal=True)
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
        st.success(check.message)
ckpt = ui.current_checkpoint()
if ckpt:
    st.info(f"Training **{ckpt['model']}** starts from your weights **{ckpt['name']}**.")
    if st.button("Use the pretrained weights instead"):
        del st.session_state[ui.CHECKPOINT]
        st.rerun()

st.page_link("pages/dataset.py", label="Next: load your images", icon=":material/arrow_forward:")
