"""3 · Configure: every TrainConfig setting, defaults suggested by the data, which layers are frozen, and the
time and memory a run will take. The widgets build one TrainConfig; it is validated before anything uses it."""
import streamlit as st

from core.config import (
    AMP_MODES,
    BN_STATS,
    COMPILE_MODES,
    DEVICES,
    GROUP_BY,
    HEAD_INITS,
    LOSSES,
    MONITORS,
    OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    TrainConfig,
)
from core.plan import Suggestion, format_bytes, format_seconds, preprocess_for, quick_start, suggest_settings
from core.runtime import default_device
from core.train import advise_setup, stage_frozen_counts
from pages import charts, state, ui

ui.through_app(__file__)

st.title("3 · Configure the training")
device = default_device()
overview = ui.current_overview()
models = list(dict.fromkeys([*(st.session_state.get(ui.CANDIDATES) or []), ui.current_model()]))
model = st.selectbox("Model", models, index=models.index(ui.current_model()),
                     help="Pick the candidates on the Models page.")
st.session_state[ui.MODEL] = model
native = ui.attempt(f"Building {model}", preprocess_for, model)
native = native.input_size if native else 224
suggestion = suggest_settings(overview.report, device, native) if overview else Suggestion()
dataset_id = st.session_state.get(ui.DATASET)
fresh = overview is not None and st.session_state.get(ui.SUGGESTED_FOR) != dataset_id
if fresh:  # a dataset seen here for the first time: adjust the settings to it, once
    st.session_state[ui.CONFIG] = suggestion.apply(ui.current_config()).to_dict()
    st.session_state[ui.SUGGESTED_FOR] = dataset_id
base = ui.current_config()
state.seed_config_widgets(base, overwrite=fresh)


def _apply(changes: dict) -> None:
    """A preset button: overwrite those settings in the widgets (runs before the widgets are drawn)."""
    state.seed_config_widgets(state.config_from_widgets(base).replace(**changes), overwrite=True)


if suggestion.reasons:
    st.info("**Suggested for your data** (applied when you first opened this page with it):\n\n" +
            "\n".join(f"- {r}" for r in suggestion.reasons))
quick = quick_start(device)
cols = st.columns(3)
cols[0].button("Apply the suggestions", on_click=_apply, args=(suggestion.changes,),
               disabled=not suggestion.changes, width="stretch")
cols[1].button(f"Quick {device.upper()} run: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in quick.items()),
               on_click=_apply, args=(quick,), width="stretch",
               help="A short first run, to see the whole path work before a long one.")
defaults = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("model", "checkpoint_path")}
cols[2].button("Reset to the defaults", on_click=_apply, args=(defaults,), width="stretch")

# --- the basics
st.subheader("The basics")
if st.session_state["cfg.image_size"] == native:  # the model's own size has one button: "0"
    st.session_state["cfg.image_size"] = 0
current_size = st.session_state["cfg.image_size"]
sizes = sorted({0, 32, 48, 64, 96, 128, 160, 192, 256, 320, current_size} - {native})
st.segmented_control("Image size", sizes, key="cfg.image_size", required=True,
                     format_func=lambda s: f"{native} px (the model's own)" if s == 0 else f"{s} px",
                     help="The side of the square the network sees. The model was trained at its own size; "
                          "smaller is much faster (time grows with the square of the side) and fine for small "
                          "images.")
left, right = st.columns([2, 3])
with left:
    st.number_input("Epochs", 1, 10_000, step=1, key="cfg.epochs",
                    help="Passes over the training images. Early stopping ends sooner when validation stops improving.")
    st.number_input("Batch size", 1, 65_536, step=8, key="cfg.batch_size",
                    help="Images per optimisation step. Lower it if memory runs out.")
    st.number_input("Learning rate (head)", 0.0, 10.0, step=1e-4, format="%.1e", key="cfg.lr",
                    help="Step size for the new head; deeper layers get smaller rates (see the decay below).")
with right:
    st.slider("Freeze ratio", 0.0, 1.0, step=0.05, key="cfg.freeze_ratio",
              help="Share of the pretrained layer groups kept fixed, from the input side. Frozen layers keep "
                   "their ImageNet features and cost no gradient; 0 fine-tunes everything.")
    groups_slot = st.container()

# --- everything an expert expects
with st.expander("Learning rate, optimiser and schedule"):
    c1, c2 = st.columns(2)
    c1.selectbox("Optimiser", OPTIMIZERS, key="cfg.optimizer")
    c1.slider("Top trunk group's learning rate, as a share of the head's", 0.0, 2.0, step=0.05,
              key="cfg.trunk_lr_ratio", help="The trainable layer group just below the head trains at lr × this.")
    c1.slider("Learning-rate decay per layer group (discriminative lr)", 0.0, 1.0, step=0.05, key="cfg.lr_decay",
              help="Each group further down trains at a further × decay: layers near the input change least.")
    c1.number_input("Weight decay", 0.0, 1.0, step=1e-4, format="%.1e", key="cfg.weight_decay")
    c1.slider("Momentum (SGD)", 0.0, 0.99, step=0.01, key="cfg.momentum")
    c2.selectbox("Schedule", SCHEDULES, key="cfg.schedule",
                 help="cosine: warm up, then decay to 0; step: /10 every few epochs; plateau: /10 when the "
                      "validation loss stalls; constant.")
    c2.number_input("Warm-up epochs (cosine)", 0.0, 100.0, step=0.5, key="cfg.warmup_epochs")
    c2.number_input("Head-only epochs first (the trunk waits)", 0.0, 100.0, step=0.5, key="cfg.head_warmup_epochs",
                    help="The new head learns alone first, so its first random gradients never reach the trunk.")
    c2.number_input("Epochs per /10 step (step)", 1, 1000, key="cfg.step_epochs")
    c2.number_input("Patience (plateau)", 0, 1000, key="cfg.plateau_patience")
with st.expander("Loss"):
    c1, c2 = st.columns(2)
    c1.selectbox("Loss", LOSSES, key="cfg.loss",
                 help="weighted cross-entropy or focal loss for imbalanced classes (suggested from 10:1).")
    c1.slider("Label smoothing", 0.0, 0.5, step=0.05, key="cfg.label_smoothing",
              help="Softens the targets a little: less over-confident predictions.")
    c2.number_input("Focal gamma (focal loss)", 0.0, 10.0, step=0.5, key="cfg.focal_gamma")
with st.expander("Regularisation and weight averaging"):
    c1, c2 = st.columns(2)
    c1.number_input("L2-SP: pull toward the pretrained weights (0 = off)", 0.0, 100.0, step=0.01, format="%.3f",
                    key="cfg.l2sp", help="Penalises the trunk's distance from its pretrained weights instead of "
                                         "from zero (Li et al. 2018).")
    c1.number_input("Mixup alpha (0 = off)", 0.0, 10.0, step=0.1, key="cfg.mixup")
    c1.number_input("CutMix alpha (0 = off)", 0.0, 10.0, step=0.1, key="cfg.cutmix")
    c2.number_input("EMA of the weights: half-life in epochs (0 = off)", 0.0, 1000.0, step=0.5, key="cfg.ema_epochs",
                    help="Validation, the saved model and the test use a moving average of the weights.")
    c2.checkbox("WiSE-FT: mix the fine-tuned and the probe's weights, the share chosen on validation",
                key="cfg.wise_ft")
    c2.checkbox("Test-time augmentation: average each image with its mirror (needs horizontal flips)",
                key="cfg.tta")
with st.expander("Augmentation"):
    c1, c2 = st.columns(2)
    c1.checkbox("Horizontal flips", key="cfg.augment.hflip", help="Off for text, digits and anything with a handedness.")
    c1.checkbox("Vertical flips", key="cfg.augment.vflip", help="For microscopy or aerial images.")
    c1.slider("Smallest crop (share of the image kept)", 0.05, 1.0, step=0.05, key="cfg.augment.scale_min")
    c1.slider("Rotation (± degrees)", 0.0, 180.0, step=5.0, key="cfg.augment.rotation_deg")
    c2.slider("Brightness jitter", 0.0, 1.0, step=0.05, key="cfg.augment.brightness")
    c2.slider("Contrast jitter", 0.0, 1.0, step=0.05, key="cfg.augment.contrast")
    c2.slider("Noise (std)", 0.0, 1.0, step=0.01, key="cfg.augment.noise_std")
    c2.slider("Blur probability", 0.0, 1.0, step=0.05, key="cfg.augment.blur_prob")
    preview_slot = st.container()
with st.expander("Stopping, validation and split"):
    c1, c2 = st.columns(2)
    c1.selectbox("Best epoch by", MONITORS, key="cfg.monitor",
                 format_func={"val_macro_f1": "validation macro-F1", "val_accuracy": "validation accuracy",
                              "val_loss": "validation loss"}.get,
                 help="What the saved model, early stopping and unfreezing stages compare; ties go to the lower "
                      "loss. Macro-F1 weighs every class equally (rare defect classes count). The loss is "
                      "smoother but label smoothing raises it at equal accuracy, favouring the baseline.")
    c1.number_input("Early-stopping patience (epochs, 0 = off)", 0, 1000, key="cfg.early_stopping_patience")
    c1.number_input("Also validate every N batches (0 = once per epoch, -1 = auto)", -1, 10**9,
                    key="cfg.val_every_batches",
                    help="More points on the live validation curves, at the cost of validation time. Auto: every "
                         "100 batches when an epoch has 300 or more.")
    c2.slider("Validation share (when the data has no val split)", 0.0, 0.5, step=0.05, key="cfg.val_fraction")
    c2.slider("Test share (when the data has no split at all)", 0.0, 0.5, step=0.05, key="cfg.test_fraction")
    c2.number_input("Seed", 0, 2**31 - 1, key="cfg.seed")
    c2.selectbox("Related images (views of one object, one patient) kept in one split", GROUP_BY,
                 key="cfg.group_by",
                 format_func={"auto": "auto: from file names and image similarity", "names": "from file names only",
                              "embeddings": "from file names and image similarity, however many images",
                              "none": "don't look for them (duplicates and CSV groups only)"}.get,
                 help="Views of one object split between training and validation let validation score memory. "
                      "A CSV 'group' column always wins. The Dataset page shows the groups found.")
with st.expander("Progressive unfreezing"):
    st.caption("After the first stage, each further stage unfreezes another share of the frozen layers at lr/10; "
               "a stage that makes validation worse is rolled back.")
    c1, c2 = st.columns(2)
    c1.number_input("Extra stages", 0, 20, key="cfg.unfreeze_stages")
    c2.number_input("Epochs per extra stage", 1, 1000, key="cfg.stage_epochs")
    stages_slot = st.container()
with st.expander("Head and adapter"):
    c1, c2 = st.columns(2)
    c1.number_input("Adapter layers (0–4)", 0, 4, key="cfg.adapter_layers",
                    help="Hidden layers between the backbone and the head, for images far from ImageNet.")
    c1.number_input("Adapter width", 8, 8192, step=32, key="cfg.adapter_dim")
    c1.slider("Dropout before the head", 0.0, 0.95, step=0.05, key="cfg.dropout")
    c2.selectbox("Head initialisation", HEAD_INITS, key="cfg.head_init",
                 help="random: fine-tune from a fresh head; linear_probe: start from the classifier fitted on the "
                      "frozen features (LP-FT); augmented_probe: from one fitted on augmented views of the "
                      "training images (what fine-tuning shows the head).")
    c2.selectbox("BatchNorm statistics", BN_STATS, key="cfg.bn_stats",
                 help="trainable: the layers that train learn the new data's statistics, frozen layers keep "
                      "ImageNet's; frozen: every layer keeps ImageNet's (for very small batches); all: every "
                      "layer learns them.")
with st.expander("Machine and tracking"):
    c1, c2 = st.columns(2)
    c1.selectbox("Device", DEVICES, key="cfg.device")
    c1.selectbox("Mixed precision", AMP_MODES, key="cfg.amp")
    c1.selectbox("torch.compile", COMPILE_MODES, key="cfg.compile")
    c1.checkbox("Channels-last memory format", key="cfg.channels_last")
    c1.number_input("Image cache limit (GB, empty = half the free memory)", 0.0, 4096.0,
                    key="cfg.max_cache_gb")
    c1.number_input("Loader workers (streaming only)", 0, 64, key="cfg.num_workers")
    c2.text_input("Run name", key="cfg.run_name", placeholder="optional")
    c2.checkbox("Weights & Biases (offline unless WANDB_API_KEY is set)", key="cfg.wandb")
    c2.text_input("W&B project", key="cfg.wandb_project")
    c2.checkbox("TensorBoard", key="cfg.tensorboard")
    c2.checkbox("Gradient statistics per layer group (the Train page's heat map)", key="cfg.grad_stats")

# --- one config, validated before anything uses it
try:
    config = state.config_from_widgets(base).validate()
except ConfigError as exc:
    st.error(f"**This configuration cannot be used:** {ui.md_escape(exc)}. Change that setting above.")
    ui.stop_page()
st.session_state[ui.CONFIG] = config.to_dict()

overview = ui.current_overview()
for item in advise_setup(config.to_dict(), overview.report.class_counts if overview else {}):  # may name classes
    st.warning(f"**{item.code.replace('_', ' ').capitalize()}:** {ui.md_escape(item.message)}. "
               f"{ui.md_escape(item.action)}")


def time_and_memory(estimate, timing) -> None:
    """The cost of the run: parameters and memory at once, the time when this machine has timed the setup."""
    if timing is not None:
        st.caption(ui.timing_caption(timing))
    if not estimate:
        return
    timed = estimate.seconds_per_epoch is not None
    pending = "timing…" if timing is not None else "—"
    m = st.columns(5)
    m[0].metric("Parameters", f"{estimate.params / 1e6:.2f} M", f"{estimate.trainable_params / 1e6:.2f} M trainable",
                delta_color="off", delta_arrow="off")
    m[1].metric("Training memory", format_bytes(estimate.training_memory_bytes) if timed or overview is None
                else f"{format_bytes(estimate.weights_bytes)} + …",
                help="Weights, gradients and optimiser state, plus the activations kept for backward at this "
                     "batch size (measured with the timing): a rough bound.")
    m[2].metric("Image cache", format_bytes(estimate.cache_bytes), help="Every image decoded once, as uint8.")
    m[3].metric("Per epoch", format_seconds(estimate.seconds_per_epoch) if timed else pending,
                help=f"on {ui.device_label()}")
    plural = "s" if estimate.total_epochs > 1 else ""
    m[4].metric(f"Whole run (≤ {estimate.total_epochs} epoch{plural})",
                format_seconds(estimate.total_seconds) if timed else pending)
    if overview is None:
        st.caption("Load a dataset for a time estimate.")
    low, high = estimate.epoch_seconds_range or (0, 0)
    if estimate.measurements > 1 and high > 1.2 * low:
        st.caption(f"Timed {estimate.measurements} times on this machine: {format_seconds(low)} to "
                   f"{format_seconds(high)} per epoch (the fastest is shown; the slower ones ran beside other work).")
    if estimate.native_seconds_per_epoch is not None:
        st.caption(f"At the model's own {estimate.native_input_size} px, an epoch would take about "
                   f"{format_seconds(estimate.native_seconds_per_epoch)} on this CPU.")
    if estimate.slow:
        st.warning(f"This run will be slow on the {estimate.device.upper()}: up to "
                   f"{format_seconds(estimate.total_seconds)}, {format_seconds(estimate.seconds_per_epoch)} per "
                   "epoch. For a first run, use the quick button above (smaller images, fewer epochs).")
    for note in estimate.notes:  # may quote an error's message
        st.caption(ui.md_escape(note[0].upper() + note[1:] + "."))


with preview_slot:
    ui.show_augmentation_preview(config)

st.subheader("Before you start: time and memory")
estimate = ui.show_estimate(config, overview, time_and_memory)  # never waits: a timing runs in the background
if estimate:
    groups_slot.plotly_chart(charts.groups_figure(estimate.groups), key="groups")
    groups_slot.caption(f"{estimate.frozen_groups} of {estimate.total_groups} layer groups frozen; "
                        f"{estimate.trainable_params / 1e6:.2f} M of {estimate.params / 1e6:.2f} M parameters train.")
    counts = stage_frozen_counts(estimate.frozen_groups, config.unfreeze_stages)
    stages_slot.caption("Frozen layer groups per stage: " + " → ".join(str(c) for c in counts))
st.page_link("pages/train.py", label="Next: train", icon=":material/arrow_forward:")
