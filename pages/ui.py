"""What every page shares: the workspace, the process-wide job manager, the small per-user state, the
sidebar, and errors shown as messages that say what to do (never as tracebacks).

Per-user state (st.session_state) holds small values only: a dataset id, model names, the config as a
plain dict, the watched run id. Threads, models and datasets live in core and in Streamlit's caches.

The values in KEPT outlive the session: app.py restores them when a session starts (a reload, a second tab, a
sign-in) from the user's file on the server (core.sessions) and from the page address, and saves what changed
after every run of a page. The address carries the dataset and run a page shows (`?dataset=…&run=…`), so a
reload or a shared link lands on them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, TypeVar

import streamlit as st

from core import sessions
from core.access import AccessPolicy, DatasetOwners, User
from core.model import DEFAULT_MODEL
from core.config import AugmentSpec, TrainConfig
from core.runs import JobManager
from core.runs import BUGS, USER_ERRORS, TaskSnapshot
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

# kept on the server per user (core.sessions) and restored when a session starts: the values above, and the
# views' own "…saved" values (the Models page's bake-off settings, the Evaluate page's choices)
KEPT = (DATASET, CANDIDATES, EXTRA_MODELS, MODEL, CHECKPOINT, CONFIG, RUN, SUGGESTED_FOR,
        "models.bakeoff.floor", "models.bakeoff.max_images", "models.bakeoff.size",
        "evaluate.run.saved", "evaluate.split.saved", "evaluate.report.saved",
        "evaluate.costs.saved")
_KEPT_FOR = "_kept.user"  # whose saved state this session holds
_KEPT_SAVED = "_kept.saved"  # key -> the JSON text last saved (or read): only changed values are written
# the address: query parameter -> session key, and the parameters each page shows (the others are removed)
URL_KEYS = {"dataset": DATASET, "run": RUN}
PAGE_URL = {"pages/models.py": ("dataset",), "pages/dataset.py": ("dataset",), "pages/configure.py": ("dataset",),
            "pages/train.py": ("dataset", "run"), "pages/evaluate.py": ("run",)}

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


# --- the user's place, kept across reloads and tabs
def _valid(key: str, value: Any) -> bool:
    """Whether a restored value may be used: ids must name a dataset or run this user may see."""
    if key == DATASET:
        return sessions.dataset_visible(workspace().root, user(), value)
    if key == RUN:
        return sessions.run_visible(job_manager().store, user(), value) is not None
    if key == CHECKPOINT:
        return isinstance(value, dict) and isinstance(value.get("path"), str) and os.path.isfile(value["path"])
    return True


def restore_state() -> None:
    """At the start of a session (a reload, a new tab, a sign-in), before the page runs: the user's kept values
    where the session has none, and the dataset and run the address names (they win: a shared link shows them).
    A value that names something gone, or someone else's, is dropped."""
    me, state = user(), st.session_state
    if state.get(_KEPT_FOR) == me.name:
        return
    if _KEPT_FOR in state:  # another user signed in in this browser session: nothing of the last one's stays,
        for key in list(state.keys()):  # not even a widget's value
            if key != USER:
                del state[key]
    saved = sessions.load_state(workspace().root, me.name)
    for key in KEPT:
        if key not in state and key in saved and _valid(key, saved[key]):
            state[key] = saved[key]
    for param, key in URL_KEYS.items():
        value = st.query_params.get(param)
        if value and value != state.get(key) and _valid(key, value):
            state[key] = value
            if key == RUN:  # the Train and Evaluate pages show the run the address names, whatever else trains
                state[RUN_ASKED] = value
                state["evaluate.run.saved"] = {"watched": value, "run": value}
    state[_KEPT_FOR] = me.name
    state[_KEPT_SAVED] = {k: json.dumps(v, sort_keys=True) for k, v in saved.items() if k in KEPT}


def keep_state() -> None:
    """After a page ran: save the kept values that changed (a failure to save never breaks the page)."""
    state = st.session_state
    if state.get(_KEPT_FOR) != user().name:
        return
    last = state.get(_KEPT_SAVED, {})
    now = {k: json.dumps(state[k], sort_keys=True) for k in KEPT if k in state and sessions.jsonable(state[k])}
    changed = {k: state[k] for k, text in now.items() if last.get(k) != text}
    removed = [k for k in last if k not in now]
    if not changed and not removed:
        return
    try:
        sessions.save_state(workspace().root, user().name, changed, removed)
    except OSError:
        log.exception("could not save the working state of %s", user().name)
        return
    state[_KEPT_SAVED] = now


def show_in_address(page_file: str) -> None:
    """Put the dataset and run the page shows into the address (and take out the ones it does not show)."""
    state = st.session_state
    shown = {"dataset": state.get(DATASET), "run": state.get(RUN)}
    if page_file == "pages/evaluate.py":
        shown["run"] = state.get("evaluate.run") or shown["run"]  # the run picked there
    wanted = PAGE_URL.get(page_file, ())
    for param in URL_KEYS:
        value = shown[param] if param in wanted else None
        if value and st.query_params.get(param) != value:
            st.query_params[param] = value
        elif not value and param in st.query_params:
            del st.query_params[param]


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


def mirrored(widget_key: str, value_key: str, default: Any) -> dict[str, Any]:
    """Keyword arguments for a widget whose value lives in a plain session key (`value_key`), not in the
    widget's own state: Streamlit drops the state of widgets a `run_every` fragment's reruns do not draw
    (streamlit#10805), and the widget then comes back empty (the Models page lost its candidates after each
    bake-off). The widget is set from `value_key` on every run; a user's change is copied back by on_change,
    which runs before the script. Code that changes the value sets `value_key`."""
    st.session_state.setdefault(value_key, default)
    st.session_state[widget_key] = st.session_state[value_key]
    return {"key": widget_key, "on_change": _copy_state, "args": (widget_key, value_key)}


def _copy_state(source: str, target: str) -> None:
    st.session_state[target] = st.session_state.get(source)


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


# --- the sidebar
@st.cache_resource(show_spinner=False)
def device_label() -> str:
    from core.runtime import machine_description

    return machine_description()


@st.cache_data(max_entries=32, show_spinner=False)
def dataset_name(root: str, dataset_id: str) -> str:
    from core.runs import dataset_names

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
    from core.plan import format_seconds

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
