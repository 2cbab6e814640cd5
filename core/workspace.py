"""The dashboard's workspace: one folder holding the dataset store, the run store and uploaded weights.

`<root>/datasets/` is core.data.store's content-addressed store, `<root>/runs/` the RunStore, and
`<root>/checkpoints/` the users' own uploaded weights. The root comes from TRANSFER_STUDIO_WORKSPACE
(tests point it at a temporary folder), else `./workspace`.

On a shared server, TRANSFER_STUDIO_DATA_ROOTS (folders separated by the OS path separator, ":" on Linux)
limits which server paths the dashboard may read data from. Unset, any path the server can read is allowed
on a dashboard bound to localhost (one's own machine), and none on one reachable from other machines
(`exposed`): there, data comes as uploads unless the administrator names the folders.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import StudioError

ENV_VAR = "TRANSFER_STUDIO_WORKSPACE"
DATA_ROOTS_VAR = "TRANSFER_STUDIO_DATA_ROOTS"
DEFAULT_ROOT = "workspace"


class PathNotAllowed(StudioError, PermissionError):
    """A server path outside the folders this server lets the dashboard read."""


@dataclass(frozen=True)
class Workspace:
    root: str  # absolute
    data_roots: tuple[str, ...] | None = None  # real paths data may be read from on the server; None: any

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, exposed: bool = False) -> Workspace:
        roots = environ.get(DATA_ROOTS_VAR)
        if roots is None:
            allowed = () if exposed else None
        else:
            allowed = tuple(os.path.realpath(os.path.expanduser(r)) for r in roots.split(os.pathsep) if r.strip())
        return cls(os.path.abspath(environ.get(ENV_VAR) or DEFAULT_ROOT), allowed)

    def server_path(self, path: str) -> str:
        """`path` (a folder, archive or CSV on the server) as a real path, if this server allows reading it."""
        real = os.path.realpath(os.path.expanduser(path.strip()))
        if self.data_roots is None:
            return real
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.data_roots):
            where = ", ".join(self.data_roots) or ("none: server paths are turned off on a dashboard reachable "
                                                   "from other machines unless the administrator names folders")
            raise PathNotAllowed(f"{path} is outside the folders this server reads data from ({where}; set by "
                                 f"{DATA_ROOTS_VAR}). Upload an archive instead, or ask the administrator.")
        return real

    @property
    def runs_dir(self) -> str:
        return os.path.join(self.root, "runs")

    @property
    def datasets_dir(self) -> str:
        return os.path.join(self.root, "datasets")

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.root, "checkpoints")
