"""The model a server is serving, and its hot switch when the served alias moves.

`ModelHolder(registry, "name@alias")` loads the version the alias points at (bundle checked, ONNX Runtime session
made and run once); its watcher thread asks the registry every `poll_seconds` which version the alias names
(`registry.alias_version`: one SELECT; a plain name follows its champion, else its latest version) and, on a
change, loads that version whole before replacing `holder.current` in one assignment. A request takes
`holder.current` once and keeps that `Served` to its end, so a switch never fails or mixes a request in flight. A
pinned ref ("name:3") never moves.
A version that fails to load leaves the old one serving, and the error in `last_error`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.deploy.bundle import Bundle, OnnxModel
from core.deploy.registry import parse_ref

logger = logging.getLogger("core.deploy.hotswap")


@dataclass(frozen=True, eq=False)
class Served:
    """One loaded model version: what a request is served by, from its preprocessing to its answer."""
    name: str
    version: int
    bundle: Bundle
    model: OnnxModel
    loaded_at: float

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes


class ModelHolder:
    def __init__(self, registry: Any, ref: str, threads: int = 0, poll_seconds: float = 1.0,
                 on_load: Callable[[Served], None] | None = None, on_switch: Callable[[Served], None] | None = None,
                 keep: int = 2, spinning: bool = True):
        self.registry, self.ref, self.threads, self.poll_seconds = registry, ref, threads, float(poll_seconds)
        self.name, self.alias, pinned = parse_ref(ref)  # the registry's own RegistryError for a malformed ref
        self.follows = pinned is None  # "name" follows its champion (else its latest), "name@alias" the alias
        self.on_load, self.on_switch, self.keep, self.spinning = on_load, on_switch, max(1, keep), spinning
        self._cache: OrderedDict[int, Served] = OrderedDict()  # recent versions, so a rollback is instant
        self.switches = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: Served = self._load(registry.resolve(ref))

    # ------------------------------------------------------------------------------------------ loading
    def _load(self, mv: Any) -> Served:
        version = int(mv.version)
        if version in self._cache:
            self._cache.move_to_end(version)
            return self._cache[version]
        mv.verify()  # the registry's copy is immutable: a changed file is refused, not served
        bundle = Bundle.load(mv.path)
        model = OnnxModel(bundle, self.threads, self.spinning)
        size = int(bundle.preprocessing["input_size"])
        model.run(np.zeros((1, 3, size, size), dtype=np.float32))  # the first request must not pay the warm-up
        served = Served(str(mv.name), version, bundle, model, time.time())
        if self.on_load is not None:
            self.on_load(served)
        self._cache[version] = served
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return served

    def check(self) -> bool:
        """One look at the registry; switch when the followed alias names another version. True on a switch."""
        if not self.follows:
            return False
        try:
            version = self.registry.alias_version(self.name, self.alias)
            if version is None:
                self.last_error = f"alias {self.ref} no longer exists; still serving version {self.current.version}"
                return False
            if int(version) == self.current.version:
                return False
            served = self._load(self.registry.resolve(f"{self.name}:{int(version)}"))
        except Exception as exc:
            message = f"cannot switch to the new version of {self.ref}: {exc}"
            if message != self.last_error:
                logger.error("%s", message)
            self.last_error = message
            return False
        old, self.current = self.current, served  # one assignment: requests take either the old or the new
        self.switches += 1
        self.last_error = None
        logger.info("switched %s from version %s to %s", self.ref, old.version, served.version)
        if self.on_switch is not None:
            try:
                self.on_switch(served)
            except Exception:
                pass
        return True

    # ------------------------------------------------------------------------------------------ watching
    def start(self) -> None:
        if self.follows and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"alias-watch-{self.ref}", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
