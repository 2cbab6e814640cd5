"""A challenger beside the served model: shadow mode and A/B traffic, so a new version is measured on real
requests before it is promoted.

    shadow  every request is answered by the champion; the challenger predicts the same images afterwards
            (a background task, after the response is sent, so the client never waits for it) and its
            predictions are logged with role "shadow" and the served prediction's id as request_id
    ab      a share of requests (`share`, 0-1) is answered by the challenger instead; both versions' rows are
            role "served", told apart by their version

The challenger follows its alias like the champion does (core.deploy.hotswap). When both name the same version
(after a promotion), there is nothing to compare and the champion alone serves. The monitor stage
(core.monitor.challenger) compares the two from the prediction log as feedback arrives.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from core.deploy.hotswap import ModelHolder, Served

MODES = ("shadow", "ab")


@dataclass(frozen=True)
class Route:
    """Who answers one request, and who (if anyone) predicts it in the shadow."""
    answer: Served
    shadow: Served | None = None
    arm: str = "champion"  # "champion" | "challenger": which one answered


class Router:
    def __init__(self, champion: ModelHolder, challenger: ModelHolder | None = None, mode: str = "shadow",
                 share: float = 0.1, seed: int | None = None):
        if mode not in MODES:
            raise ValueError(f"challenger mode {mode!r}: choose one of {', '.join(MODES)}")
        if not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"A/B share {share} must be between 0 and 1")
        self.champion, self.challenger, self.mode, self.share = champion, challenger, mode, float(share)
        self._random = random.Random(seed)

    def pick(self) -> Route:
        served = self.champion.current  # each taken once: a request keeps the versions it started with
        other = self.challenger.current if self.challenger is not None else None
        if other is None or (other.name, other.version) == (served.name, served.version):
            return Route(served)
        if self.mode == "shadow":
            return Route(served, shadow=other)
        if self._random.random() < self.share:
            return Route(other, arm="challenger")
        return Route(served)

    def describe(self) -> dict | None:
        if self.challenger is None:
            return None
        current = self.challenger.current
        return {"ref": self.challenger.ref, "version": current.version, "mode": self.mode,
                "share": self.share if self.mode == "ab" else None,
                "active": (current.name, current.version) != (self.champion.current.name,
                                                               self.champion.current.version)}

    def start(self) -> None:
        if self.challenger is not None:
            self.challenger.start()

    def stop(self) -> None:
        if self.challenger is not None:
            self.challenger.stop()
