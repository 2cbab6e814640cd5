"""Start: what Transfer Studio does, where you are on the way to a trained model, and a one-click demo."""
import streamlit as st

from core.config import TrainConfig
from core.plan import quick_start
from core.runs import FINISHED
from core.runtime import default_device
from pages import ui

ui.through_app(__file__)

st.title("Transfer Studio")
st.write("Teach a pretrained image model to recognise **your** classes. The model already knows edges, "
         "textures and shapes from millions of photos (ImageNet); you only fit its last layers to your "
         "labelled images. The pages on the left go in order; every setting has a sensible default.")

manager = ui.job_manager()
runs = manager.visible_runs(ui.user())
dataset_id = st.session_state.get(ui.DATASET)
active = manager.active_jobs()
finished = [r for r in runs if r["status"] in FINISHED]

steps = [
    ("pages/models.py", "Pick a model", True, f"{ui.md_escape(ui.current_model())} (the default works offline)"),
    ("pages/dataset.py", "Load your images", bool(dataset_id),
     ui.md_escape(ui.dataset_name(ui.workspace().root, dataset_id)) if dataset_id
     else "a zip of class folders, or the demo"),
    ("pages/configure.py", "Check the settings", ui.CONFIG in st.session_state,
     "suggested from your data; a time estimate before you start"),
    ("pages/train.py", "Train", bool(active or finished),
     f"running: {active[0].run_id}" if active else f"{len(finished)} finished run(s)" if finished else "live charts"),
    ("pages/runs.py", "Compare runs", len(runs) > 1, f"{len(runs)} run(s) so far"),
    ("pages/evaluate.py", "Evaluate", bool(finished), "confusion matrix, per-class scores, mistakes"),
]
for path, label, done, detail in steps:
    left, right = st.columns([1, 3])
    with left:
        st.page_link(path, label=label, icon=":material/check_circle:" if done else ":material/radio_button_unchecked:")
    right.caption(detail)

st.subheader("In a hurry?")
st.write("Train a small model on the bundled demo data (handwritten digits, 10 classes) right now, with "
         "settings that finish in a minute or two on this machine. You can look at every page afterwards.")
refusal = ui.policy().training_refusal()
if refusal:
    st.caption(refusal)
if st.button("Train a demo model now", type="primary", disabled=bool(active) or bool(refusal)):
    config = TrainConfig.from_dict(quick_start(default_device(), demo=True)).replace(model=ui.current_model())
    run_id = ui.attempt("Starting the demo run", lambda: manager.start(config.validate(), "demo", owner=ui.user().name))
    if run_id:
        st.session_state[ui.RUN] = run_id
        st.session_state[ui.DATASET] = manager.store.get_run(run_id)["dataset_id"]
        st.session_state[ui.CONFIG] = config.to_dict()
        st.switch_page("pages/train.py")
if active:
    st.caption("A run is already training; watch it on the Train page.")
