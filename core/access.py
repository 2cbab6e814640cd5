"""Who may use the dashboard, and what each user may touch: the policy, with no web framework in it.

Three ways to run, decided by the environment and Streamlit's settings (read by the pages, passed in here):
- on one's own machine (the server bound to localhost, no login): one user, "local", who may do everything;
- for a team: a login, either Streamlit's own OIDC (`st.login`, an `[auth]` section in secrets.toml) or one
  shared password (TRANSFER_STUDIO_PASSWORD) with each person giving their name. Every page is behind it;
  TRANSFER_STUDIO_ADMINS (comma-separated names or e-mail addresses) may see and act on everything;
- reachable from other machines without a login: every page says so, and training is refused.

Runs, datasets and background tasks record their owner. A user sees and acts on their own; an admin on all.
Things created before owners were recorded (owner "") belong to admins.
"""
from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import StudioError
from core.files import write_text

PASSWORD_VAR = "TRANSFER_STUDIO_PASSWORD"
ADMINS_VAR = "TRANSFER_STUDIO_ADMINS"
LOCAL_USER = "local"
LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")
OWNERS_FILE = "owners.json"  # in the dataset store: dataset id -> owner


class NotAllowed(StudioError, PermissionError):
    """The user may not do this to something another user owns."""


@dataclass(frozen=True)
class User:
    name: str
    is_admin: bool = False


@dataclass(frozen=True)
class AccessPolicy:
    login: str  # "oidc", "password" or "none"
    exposed: bool  # the server listens on more than localhost
    admins: frozenset[str] = frozenset()
    password: str = ""

    @classmethod
    def from_env(cls, address: str | None, oidc_configured: bool,
                 environ: Mapping[str, str] = os.environ) -> AccessPolicy:
        password = environ.get(PASSWORD_VAR, "")
        login = "oidc" if oidc_configured else "password" if password else "none"
        admins = frozenset(a.strip().lower() for a in environ.get(ADMINS_VAR, "").split(",") if a.strip())
        return cls(login, not is_localhost(address), admins, password)

    @property
    def open_to_the_network(self) -> bool:
        """Reachable from other machines with no login: anyone who reaches the port is every user."""
        return self.exposed and self.login == "none"

    def user(self, name: str | None) -> User | None:
        """The signed-in user (None: nobody yet). Without a login there is one local user, an admin."""
        if self.login == "none":
            return User(LOCAL_USER, True)
        if not name or not name.strip():
            return None
        name = name.strip()
        return User(name, name.lower() in self.admins)

    def check_password(self, given: str) -> bool:
        return self.login == "password" and hmac.compare_digest(given.encode(), self.password.encode())

    def training_refusal(self) -> str:
        """Why training is refused on this server, or ""."""
        if self.open_to_the_network:
            return ("Training is turned off: this dashboard is reachable from other machines and has no login, so "
                    f"anyone who can reach it could use this server. Set {PASSWORD_VAR} (and {ADMINS_VAR}) or "
                    "configure [auth] in .streamlit/secrets.toml, or bind it to 127.0.0.1 (README: Sharing the "
                    "dashboard).")
        return ""


def is_localhost(address: str | None) -> bool:
    """Whether Streamlit's server.address keeps it on this machine (unset or 0.0.0.0 means every interface)."""
    return bool(address) and address.strip().lower() in LOCAL_ADDRESSES


def may_see(user: User, owner: str | None) -> bool:
    return user.is_admin or (bool(owner) and owner == user.name)


def check_may_act(user: User, owner: str | None, what: str) -> None:
    """NotAllowed unless `user` owns the thing (or is an admin)."""
    if not may_see(user, owner):
        whose = f"{owner}'s" if owner else "an admin's (it has no recorded owner)"
        raise NotAllowed(f"{what} is {whose}; only its owner or an admin may do that")


class DatasetOwners:
    """dataset id -> owner, in `<datasets dir>/owners.json` (a dataset is content-addressed: the same images
    uploaded by two users are one dataset, owned by both)."""

    def __init__(self, datasets_dir: str):
        self.path = os.path.join(datasets_dir, OWNERS_FILE)

    def _read(self) -> dict[str, list[str]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return {k: [str(o) for o in v] for k, v in data.items() if isinstance(v, list)} if isinstance(data, dict) else {}

    def record(self, dataset_id: str, owner: str) -> None:
        data = self._read()
        if owner not in data.get(dataset_id, []):
            data.setdefault(dataset_id, []).append(owner)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_text(self.path, json.dumps(data, indent=1, sort_keys=True))

    def owners(self, dataset_id: str) -> list[str]:
        return self._read().get(dataset_id, [])

    def visible(self, user: User, dataset_ids: tuple[str, ...] | list[str]) -> list[str]:
        if user.is_admin:
            return list(dataset_ids)
        data = self._read()
        return [d for d in dataset_ids if user.name in data.get(d, [])]
