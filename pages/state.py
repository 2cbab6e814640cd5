"""The per-user state that outlives a widget, a page or a session: the kept values, the page address, and the
widgets seeded from plain session keys.

The values in KEPT outlive the session: app.py restores them when a session starts (a reload, a second tab, a
sign-in) from the user's file on the server (core.sessions) and from the page address, and saves what changed
after every run of a page. The address carries the dataset and run a page shows (`?dataset=…&run=…`), so a
reload or a shared link lands on them.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import fields
from typing import Any

import streamlit as st

from core import sessions
from core.config import AugmentSpec, TrainConfig
from pages.ui import (
    CANDIDATES,
    CHECKPOINT,
    CONFIG,
    DATASET,
    EXTRA_MODELS,
    MODEL,
    PAGES,
    RUN,
    RUN_ASKED,
    SUGGESTED_FOR,
    USER,
    job_manager,
    user,
    workspace,
)

log = logging.getLogger("transfer_studio")

# kept on the server per user (core.sessions) and restored when a session starts: the values above, and the
# views' own "…saved" values (the Models page's bake-off settings, the Evaluate page's choices)
KEPT = (DATASET, CANDIDATES, EXTRA_MODELS, MODEL, CHECKPOINT, CONFIG, RUN, SUGGESTED_FOR,
        "models.bakeoff.floor", "models.bakeoff.max_images", "models.bakeoff.size",
        "evaluate.run.saved", "evaluate.split.saved", "evaluate.report.saved",
        "evaluate.costs.saved")
_KEPT_FOR = "_kept.user"  # whose saved state this session holds
_KEPT_SAVED = "_kept.saved"  # key -> the JSON text last saved (or read): only changed values are written
# the address: query parameter -> session key; the parameters each page shows are its ui.PAGES entry's `address`
# (the others are removed)
URL_KEYS = {"dataset": DATASET, "run": RUN}


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
    picked = {"pages/evaluate.py": "evaluate.run", "pages/deploy.py": "deploy.run"}.get(page_file)
    if picked:
        shown["run"] = state.get(picked) or shown["run"]  # the run picked there
    wanted = PAGES[page_file].address if page_file in PAGES else ()
    for param in URL_KEYS:
        value = shown[param] if param in wanted else None
        if value and st.query_params.get(param) != value:
            st.query_params[param] = value
        elif not value and param in st.query_params:
            del st.query_params[param]


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
