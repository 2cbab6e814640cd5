"""The dashboard's workspace: one folder holding the dataset store, the run store and uploaded weights.

`<root>/datasets/` is core.ingest's content-addressed store, `<root>/runs/` the RunStore, and
`<root>/checkpoints/` the users' own uploaded weights. The root comes from TRANSFER_STUDIO_WORKSPACE
(tests point it at a temporary folder), else `./workspace`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_VAR = "TRANSFER_STUDIO_WORKSPACE"
DEFAULT_ROOT = "workspace"


@dataclass(frozen=True)
class Workspace:
    root: str  # absolute

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Workspace:
        return cls(os.path.abspath(environ.get(ENV_VAR) or DEFAULT_ROOT))

    @property
    def runs_dir(self) -> str:
        return os.path.join(self.root, "runs")

    @property
    def datasets_dir(self) -> str:
        return os.path.join(self.root, "datasets")

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.root, "checkpoints")
