"""What every page shares: the workspace, the process-wide job manager, the small per-user state, the
sidebar, and errors shown as messages that say what to do (never as tracebacks).

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
from dataclasses import fields
from typing import Any, TypeVar

import streamlit as st

from core.access import AccessPolicy, DatasetOwners, User
from core.catalog import DEFAULT_MODEL
from core.config import AugmentSpec, TrainConfig
from core.jobs import JobManager
from core.tasks import BUGS, USER_ERRORS
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

PAGES = {  # file -> title; app.py builds the navigation from this
    "pages/home.py": "Start",
    "pages/models.py": "1 · Models",
    "pages/dataset.py": "2 · Dataset",
    "pages/configure.py": "3 · Configure",
    "pages/train.py": "4 · Train",
    "pages/runs.py": "5 · Runs",
    "pages/evaluate.py": "6 · Evaluate",
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

    core's errors (ConfigError, IngestError, WeightsError, CatalogError, SplitError, EvaluationError, ...)
    are ValueError / LookupError / RuntimeError / OSError subclasses whose messages say what to do. Both
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


def seed(key: str, value: Any) -> None:
    """Give a keyed widget its value when it has none (first visit, or after Streamlit dropped the state
    of a widget on another page)."""
    if key not in st.session_state:
        st.session_state[key] = value


def _typed(default: Any, value: Any) -> Any:
    """A value of the widget's type: number inputs refuse an int where they were built for floats."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


CONFIG_WIDGETS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("model", "checkpoint_path", "augment"))
AUGMENT_WIDGETS = tuple(f.name for f in fields(AugmentSpec))


def seed_config_widgets(config: TrainConfig, overwrite: bool = False) -> None:
    """Put `config` into the Configure page's widget keys (`cfg.<field>`, `cfg.augment.<field>`)."""
    defaults, d = TrainConfig().to_dict(), config.to_dict()
    pairs = [(f"cfg.{k}", _typed(defaults[k], d[k])) for k in CONFIG_WIDGETS]
    pairs += [(f"cfg.augment.{k}", _typed(defaults["augment"][k], d["augment"][k])) for k in AUGMENT_WIDGETS]
    for key, value in pairs:
        if key == "cfg.image_size":
            value = value or 0  # the widget's "model's own size" option
        if overwrite:
            st.session_state[key] = value
        else:
            seed(key, value)


def config_from_widgets(base: TrainConfig) -> TrainConfig:
    """The config the Configure page's widgets describe (fields without a widget keep `base`'s values).

    Not validated: the caller validates and shows the ConfigError.
    """
    d = base.to_dict()
    state = st.session_state
    d.update({k: state[f"cfg.{k}"] for k in CONFIG_WIDGETS if f"cfg.{k}" in state})
    d["augment"] = {**d["augment"], **{k: state[f"cfg.augment.{k}"] for k in AUGMENT_WIDGETS
                                        if f"cfg.augment.{k}" in state}}
    d["image_size"] = d["image_size"] or None
    d["max_cache_gb"] = d["max_cache_gb"] or None
    return TrainConfig.from_dict(d)


@st.cache_data(max_entries=8, show_spinner="Splitting and auditing the dataset (and looking for related images)…")
def _overview(root: str, dataset_id: str, model: str, image_size: int | None, val_fraction: float,
              test_fraction: float, seed: int, group_by: str = "auto"):
    from core.overview import dataset_overview

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


def estimate(config: TrainConfig, overview):
    """core.estimate.estimate_run for this config on the current dataset's split (timed only with a dataset)."""
    from core.estimate import estimate_run

    sizes = overview.split_sizes() if overview else {}
    with st.spinner("Timing one training step on this machine…"):
        return attempt("Estimating the run", estimate_run, config, sizes.get("train", 0), sizes.get("val", 0),
                       sizes.get("test", 0), len(overview.report.class_counts) if overview else 2,
                       measure=overview is not None)


@st.cache_data(max_entries=16, show_spinner=False)
def augmentation_grid(root: str, dataset_id: str, model: str, image_size: int | None, augment: dict):
    from core.ingest import load_dataset
    from core.overview import augmentation_preview

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


# --- the sidebar
@st.cache_resource(show_spinner=False)
def device_label() -> str:
    from core.estimate import device_description

    return device_description()


@st.cache_data(max_entries=32, show_spinner=False)
def dataset_name(root: str, dataset_id: str) -> str:
    from core.compare import dataset_names

    return dataset_names(root).get(dataset_id, dataset_id)


def sidebar(container) -> None:
    """Device, dataset, model and running jobs, in `container` (a slot in st.sidebar)."""
    with container:
        st.caption("Transfer Studio")
        st.markdown(f"**Device:** {device_label()}")
        dataset_id = st.session_state.get(DATASET)
        name = md_escape(dataset_name(workspace().root, dataset_id)) if dataset_id else "none yet"
        st.markdown(f"**Dataset:** {name}")
        ckpt = current_checkpoint()
        st.markdown(f"**Model:** {md_escape(current_model())}"
                    + (f" (your weights: {md_escape(ckpt['name'])})" if ckpt else ""))
        manager = job_manager()
        # polls only while something runs: every rerun costs the server CPU that training on it needs
        (_polling_jobs_panel if manager.active_jobs() or manager.tasks.active() else _jobs_panel)()


def _jobs_panel_view(polling: bool = False) -> None:
    from core.estimate import format_seconds

    manager = job_manager()
    me = user()  # a user sees their own runs and tasks; an admin everyone's
    mine = {r["id"] for r in manager.visible_runs(me)} if not me.is_admin else None
    jobs = [j for j in manager.active_jobs() if mine is None or j.run_id in mine]
    tasks = manager.tasks.active(None if me.is_admin else me.name)
    if not jobs and not tasks:
        if polling:  # it just ended: redraw the page once (it then stops polling)
            st.rerun(scope="app")
        st.caption("Nothing running.")
        return
    for snap in jobs:
        st.markdown(f"**Training** `{snap.run_id}` ({snap.status})")
        st.progress(snap.progress, text=f"{snap.progress:.0%} · ETA {format_seconds(snap.eta_seconds)}")
    if jobs:
        st.page_link("pages/train.py", label="Watch it", icon=":material/monitoring:")
    for task in tasks:  # bake-offs, evaluation reports
        st.markdown(f"**Running:** {md_escape(task.label)}")  # labels and messages may name a dataset
        st.caption(f"{md_escape(task.message)} · {format_seconds(task.seconds)}")


_jobs_panel = st.fragment(_jobs_panel_view)
_polling_jobs_panel = st.fragment(run_every=2)(lambda: _jobs_panel_view(polling=True))
