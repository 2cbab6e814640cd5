"""What every page shares: the pages' registry, the workspace, the process-wide job manager, the small per-user
state's keys, and errors shown as messages that say what to do (never as tracebacks). What outlives a session
(kept values, the address) is in pages/state.py; the sidebar in pages/sidebar.py.

Per-user state (st.session_state) holds small values only: a dataset id, model names, the config as a
plain dict, the watched run id. Threads, models and datasets live in core and in Streamlit's caches.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

import streamlit as st

from core.access import AccessPolicy, DatasetOwners, User
from core.config import AugmentSpec, TrainConfig
from core.model import DEFAULT_MODEL
from core.runs import BUGS, USER_ERRORS, JobManager, TaskSnapshot
from core.workspace import Workspace

T = TypeVar("T")
log = logging.getLogger("transfer_studio")

# --- session keys: small per-user values
DATASET = "dataset_id"  # str: the stored dataset the pages work on
CANDIDATES = "candidates"  # list[str]: models picked on the Models page
EXTRA_MODELS = "extra_models"  # list[str]: timm / torchvision names added by hand
MODEL = "model"  # str: the model to train
CHECKPOINT = "checkpoint"  # dict(model, path, name): the user's own weights for MODEL
CONFIG = "train_config"  # dict: TrainConfig.to_dict() from the Configure page
RUN = "run_id"  # str: the run the Train and Evaluate pages show
USER = "user_name"  # str: who signed in with the shared password
SUGGESTED_FOR = "suggested_for"  # str: the dataset the Configure page last adjusted the settings to
RUN_ASKED = "run_asked"  # str: a run the user asked to see (a link, "Watch it"): the Train page stays on it


class Page(NamedTuple):
    """One page of the dashboard: its navigation title and icon, and the address parameters it shows."""
    title: str
    icon: str
    address: tuple[str, ...] = ()  # query parameters (state.URL_KEYS) the page puts into the address


PAGES = {  # file -> Page, in the navigation's order: the one registry of the pages (app.py's navigation, links)
    "pages/home.py": Page("Start", ":material/home:"),
    "pages/models.py": Page("1 · Models", ":material/neurology:", ("dataset",)),
    "pages/dataset.py": Page("2 · Dataset", ":material/photo_library:", ("dataset",)),
    "pages/configure.py": Page("3 · Configure", ":material/tune:", ("dataset",)),
    "pages/train.py": Page("4 · Train", ":material/monitoring:", ("dataset", "run")),
    "pages/runs.py": Page("5 · Runs", ":material/history:"),
    "pages/evaluate.py": Page("6 · Evaluate", ":material/fact_check:", ("run",)),
    "pages/predict.py": Page("7 · Predict", ":material/online_prediction:"),
    "pages/deploy.py": Page("8 · Deploy", ":material/rocket_launch:", ("run",)),
    "pages/monitor.py": Page("9 · Monitor", ":material/monitor_heart:"),
}


# --- user strings inside Markdown
_MARKDOWN_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")  # every ASCII punctuation character
_WORD_JOINER = "\u2060"  # invisible, and not a word character


def md_escape(value: Any) -> str:
    """`value` (a class, file, dataset or model name, a message quoting one) as literal text inside Markdown.

    Streamlit renders Markdown in st.markdown / write / caption / info / warning / error / success / headers, and in
    labels, metric values, image captions, radio options and progress texts: a class named
    `[click](http://evil.example)` would be a link there, `![x](http://evil.example/a.png)` an image fetched from
    another host. Every ASCII punctuation character is backslash-escaped (CommonMark allows it for all of them),
    which also keeps HTML tags, `:color[..]` directives and `$math$` as text. Three patterns Streamlit and GFM
    look for in the text after the escapes are resolved (`:material_icon:` and `:emoji:` shortcodes, `www.` and
    e-mail autolinks) are broken by an invisible word joiner before each `:`, `@` and `.`. Line breaks become
    spaces (a name is inline text, never a heading or a list). Our own fixed wording keeps its Markdown.
    """
    text = " ".join(str(value).splitlines())
    text = _MARKDOWN_PUNCTUATION.sub(lambda m: "\\" + m.group(), text)
    for char in ":@.":
        text = text.replace("\\" + char, _WORD_JOINER + "\\" + char)
    return text


# --- routing: every page runs inside app.py's navigation
_route = threading.local()  # per script-runner thread: is app.py running the page?


@contextmanager
def routed() -> Iterator[None]:
    """app.py runs the chosen page inside this."""
    _route.active = True
    try:
        yield
    finally:
        _route.active = False


class PageDone(Exception):
    """Raised by `stop_page`; app.py catches it."""


def stop_page() -> None:
    """End the page here (instead of st.stop(), which would also stop app.py from drawing the sidebar)."""
    raise PageDone


def through_app(page_file: str) -> None:
    """First call of every page. A URL that names a page (a bookmark, a reload) before app.py has run makes
    Streamlit run that file on its own, as an old-style page of the pages/ folder: no layout, no sidebar, and
    every file of pages/ listed as a page. Then run app.py in its place: its navigation picks the page the
    URL names, and runs it the usual way."""
    if getattr(_route, "active", False):
        return
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(page_file))), "app.py"),
                   run_name="__app__")
    st.stop()


def workspace() -> Workspace:
    return Workspace.from_env(exposed=policy().exposed)


# --- who is using the dashboard (core.access decides; this reads Streamlit's settings and session)
def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets.toml at all
        return False


def policy() -> AccessPolicy:
    return AccessPolicy.from_env(st.get_option("server.address"), _oidc_configured())


def user() -> User:
    """The signed-in user (app.py's `gate` has made sure there is one before any page runs)."""
    p = policy()
    if p.login == "oidc":
        info = st.user
        return p.user(info.get("email") or info.get("name") or info.get("sub"))
    return p.user(st.session_state.get(USER)) or User("", False)


def signed_in() -> bool:
    """Whether someone is signed in (always, on a server without a login)."""
    p = policy()
    if p.login == "oidc":
        return bool(st.user.is_logged_in)
    if p.login == "password":
        return bool(st.session_state.get(USER))
    return True


def sign_in() -> None:
    """The only page before signing in: OIDC's button, or the shared password with the user's name."""
    p = policy()
    st.title("Transfer Studio")
    if p.login == "oidc":
        st.info("Sign in to use this dashboard.")
        st.button("Sign in", on_click=st.login, type="primary")
        return
    with st.form("sign_in"):
        name = st.text_input("Your name", help="Runs and datasets you create are recorded as yours.")
        password = st.text_input("Team password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            if not name.strip():
                st.error("Give your name: runs and datasets are recorded under it.")
            elif not p.check_password(password):
                st.error("Wrong password.")
            else:
                st.session_state[USER] = name.strip()
                st.rerun()


def account_bar() -> None:
    """Who is signed in and a way out (with a login); a loud warning on every page when the server is
    reachable from other machines without one."""
    p = policy()
    if p.login != "none":
        me = user()
        st.sidebar.caption(f"Signed in as {md_escape(me.name)}" + (" (admin)" if me.is_admin else ""))
        if st.sidebar.button("Sign out"):
            if p.login == "oidc":
                st.logout()
            st.session_state.pop(USER, None)
            st.rerun()
    if p.open_to_the_network:
        st.error("**This dashboard is reachable from other machines and has no login.** Anyone who can reach this "
                 "port sees every run and dataset here. " + p.training_refusal())


def dataset_owners() -> DatasetOwners:
    return DatasetOwners(workspace().datasets_dir)


def visible_datasets(dataset_ids) -> list[str]:
    return dataset_owners().visible(user(), list(dataset_ids))


@st.cache_resource(show_spinner=False)
def _job_manager(root: str) -> JobManager:
    ws = Workspace(root)
    return JobManager(ws.runs_dir, ws.root)


def job_manager() -> JobManager:
    """The one JobManager of this server process (per workspace): every tab and rerun sees the same jobs."""
    return _job_manager(workspace().root)


# --- errors
def attempt(action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call into core; on failure show what went wrong as st.error and return None.

    core's errors all derive from core.errors.StudioError (and OS errors: a file missing or unreadable): their
    messages say what to do and are shown as they are; anything else is a bug, said plainly and logged. Both
    `action` and the message may quote a file or model name: they are shown as text.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if isinstance(exc, USER_ERRORS) and not isinstance(exc, BUGS):
            st.error(f"**{md_escape(action)} failed.** {md_escape(exc)}")
        else:  # a bug: say so plainly, keep the details for the server log
            log.exception("%s failed", action)
            st.error(f"**{md_escape(action)} failed unexpectedly** ({type(exc).__name__}: {md_escape(exc)}). The "
                     "server log has the details; please report it.")
    return None


# --- the current model, config and dataset
def current_model() -> str:
    return st.session_state.get(MODEL) or DEFAULT_MODEL


def current_checkpoint() -> dict | None:
    ckpt = st.session_state.get(CHECKPOINT)
    return ckpt if ckpt and ckpt.get("model") == current_model() else None


def current_config() -> TrainConfig:
    """The config built on the Configure page (defaults until then), for the current model and weights."""
    saved = st.session_state.get(CONFIG)
    config = TrainConfig.from_dict(saved) if saved else TrainConfig()
    ckpt = current_checkpoint()
    return config.replace(model=current_model(), checkpoint_path=ckpt["path"] if ckpt else None)


def update_config(**changes: Any) -> None:
    """Change settings of the current config from another page (the Configure page's widgets follow)."""
    config = current_config().replace(**changes)
    st.session_state[CONFIG] = config.to_dict()
    for key, value in changes.items():
        if f"cfg.{key}" in st.session_state:
            st.session_state[f"cfg.{key}"] = value


@st.cache_data(max_entries=8, show_spinner="Splitting and auditing the dataset (and looking for related images)…")
def _overview(root: str, dataset_id: str, model: str, image_size: int | None, val_fraction: float,
              test_fraction: float, seed: int, group_by: str = "auto"):
    from core.plan import dataset_overview

    config = TrainConfig(model=model, image_size=image_size, val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed, group_by=group_by)
    return dataset_overview(dataset_id, root, config)


def current_overview():
    """The current dataset's overview (split, audit, examples), or None when there is none or it failed."""
    dataset_id = st.session_state.get(DATASET)
    if not dataset_id:
        return None
    c = current_config()
    return attempt("Reading the dataset", _overview, workspace().root, dataset_id, c.model, c.image_size,
                   c.val_fraction, c.test_fraction, c.seed, c.group_by)


def _busy(manager: JobManager) -> bool:
    """Training or a bake-off / report in this process: a timing taken now would be slowed by it (no Streamlit
    here: the background timing calls it too)."""
    return bool(manager.active_jobs() or manager.tasks.active())


def _estimate_inputs(overview) -> tuple[int, int, int, int]:
    sizes = overview.split_sizes() if overview else {}
    return (sizes.get("train", 0), sizes.get("val", 0), sizes.get("test", 0),
            len(overview.report.class_counts) if overview else 2)


def estimate(config: TrainConfig, overview):
    """core.plan.estimate.estimate_run for this config on the current dataset's split, at once: parameters and memory,
    and the time per epoch as far as this machine has timed this setup (timed only with a dataset)."""
    from core.plan import estimate_run

    return attempt("Estimating the run", estimate_run, config, *_estimate_inputs(overview),
                   measure=overview is not None, wait=False, busy=_busy(job_manager()))


def refine_estimate(config: TrainConfig, overview, est) -> TaskSnapshot | None:
    """Time this setup in the background when `est` says a timing is due (never timed here, or only while the
    machine was busy and it is idle now); returns the timing task of this setup, if there is one."""
    from core.plan import estimate_run, setup_key

    if overview is None or est is None:
        return None
    inputs = _estimate_inputs(overview)
    manager, key, owner = job_manager(), setup_key(config, inputs[3]), user().name
    latest = manager.estimates.latest("timing", key, owner=owner)
    failed = latest is not None and not latest.active and (
        latest.status == "failed" or latest.result is None or latest.result.seconds_per_epoch is None)
    if est.timing_due and not failed:  # a timing that failed is not tried again for the same setup
        manager.estimates.submit("timing", key, f"timing {config.model} at {est.input_size} px",
                                 lambda progress: estimate_run(config, *inputs, busy=_busy(manager),
                                                               progress=progress), owner=owner)
        latest = manager.estimates.latest("timing", key, owner=owner)
    return latest


def show_estimate(config: TrainConfig, overview, render: Callable[[Any, TaskSnapshot | None], None]):
    """`render(estimate, timing)` at once with what is known, `timing` being the background timing while it
    runs (None otherwise); a fragment redraws it every second until the timing is done, then the whole page
    once, with the time. Returns the estimate known now (None when it failed: the error is shown)."""
    est = estimate(config, overview)
    task = refine_estimate(config, overview, est)
    polling = task is not None and task.active
    estimates = job_manager().estimates

    @st.fragment(run_every=1.0 if polling else None)
    def timing_view() -> None:
        snap = estimates.snapshot(task.task_id) if task is not None else None
        if polling and (snap is None or not snap.active):
            st.rerun(scope="app")  # done: the page again, with the time and without polling
        if snap is not None and snap.status == "failed":
            st.caption(f"Timing a training step failed: {md_escape(snap.error)}")
        render(est, snap if snap is not None and snap.active else None)

    timing_view()
    return est


def timing_caption(timing: TaskSnapshot) -> str:
    """What the background timing is doing, for a caption."""
    from core.plan import format_seconds

    return (f"Timing a training step on this machine ({md_escape(timing.message)}, {format_seconds(timing.seconds)} "
            "so far); the settings stay usable meanwhile.")


def may_start_another(key: str) -> bool:
    """Whether a run may start now: nothing trains on this machine, or the user ticked the box that says what
    sharing it costs (off by default: a second run is a deliberate choice)."""
    from core.plan import sharing_note
    from core.runtime import default_device

    running = len(job_manager().active_jobs())  # every user's: they all share the machine
    if not running:
        return True
    st.caption(sharing_note(running, default_device()))
    return st.checkbox("Train another run at the same time", key=key, value=False)


@st.cache_data(max_entries=16, show_spinner=False)
def augmentation_grid(root: str, dataset_id: str, model: str, image_size: int | None, augment: dict):
    from core.data import load_dataset
    from core.plan import augmentation_preview

    config = TrainConfig(model=model, image_size=image_size, augment=AugmentSpec.from_dict(augment))
    return augmentation_preview(load_dataset(root, dataset_id), config)


def show_augmentation_preview(config: TrainConfig) -> None:
    dataset_id = st.session_state.get(DATASET)
    if not dataset_id:
        st.caption("Load a dataset to preview the augmentation on its images.")
        return
    grid = attempt("Previewing the augmentation", augmentation_grid, workspace().root, dataset_id, config.model,
                   config.image_size, config.augment.to_dict())
    if grid is not None:
        st.image(grid, caption="First column: the image as the model sees it at evaluation; the others: random "
                               "training augmentations of it.", width=min(720, grid.shape[1] * 2))


# --- for the sidebar and the pages
@st.cache_resource(show_spinner=False)
def device_label() -> str:
    from core.runtime import machine_description

    return machine_description()


@st.cache_data(max_entries=32, show_spinner=False)
def dataset_name(root: str, dataset_id: str) -> str:
    from core.runs import dataset_names

    return dataset_names(root).get(dataset_id, dataset_id)
