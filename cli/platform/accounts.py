"""The accounts `up` makes for local use (providers 1..N, a buyer) and their passwords, kept in the state dir."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import dcluster
from cli.platform import state, waiting
from cli.platform.errors import PlatformError
from dcl_core import domain

logger = logging.getLogger(__name__)

ADMIN_CREDENTIALS_TIMEOUT_S = 60.0
BUYER_USERNAME = "local-buyer"


def provider_username(index: int) -> str:
    return f"local-provider-{index}"


def agent_name(index: int) -> str:
    return f"local-{index}"


class CredentialStore:
    """<state>/credentials.json (0600): the passwords of the accounts `up` created."""

    def __init__(self, path: Path):
        self.path = path

    def _load(self) -> dict:
        data = state.read_json(self.path) or {}
        data.setdefault("accounts", {})
        return data

    def password(self, username: str) -> str | None:
        entry = self._load()["accounts"].get(username)
        return entry.get("password") if entry else None

    def get_or_create(self, username: str, role: str) -> tuple[str, bool]:
        """(password, created): a saved password, or a new one saved before anyone uses it."""
        saved = self.password(username)
        if saved:
            return saved, False
        password = secrets.token_urlsafe(24)
        data = self._load()
        data["accounts"][username] = {"password": password, "role": role}
        state.write_json(self.path, data)
        return password, True

    def set_url(self, url: str, fingerprint: str | None = None) -> None:
        """Where these accounts sign in, and the certificate fingerprint to pin there (None: plain HTTP)."""
        data = self._load()
        data["platform_url"] = url
        data["tls_fingerprint"] = fingerprint
        state.write_json(self.path, data)


def login_admin(client: dcluster.Client, layout: state.Layout) -> None:
    """Sign in as the bootstrap admin, whose credentials the API writes once it has started."""
    path = layout.admin_credentials_json
    creds = waiting.wait_for(
        str(path), lambda: state.read_json(path) if path.exists() else None, ADMIN_CREDENTIALS_TIMEOUT_S
    )
    try:
        client.login(creds["username"], creds["password"])
    except dcluster.ApiError as exc:
        raise PlatformError(f"the admin credentials in {path} are refused ({exc})") from None


def _ensure_account(client: dcluster.Client, store: CredentialStore, username: str, role: str) -> bool:
    """True when the account is new on this platform's database."""
    password, created = store.get_or_create(username, role)
    try:
        client.create_account(username, password, role)
        logger.info("created %s account %s", role, username)
        return True
    except dcluster.ApiError as exc:
        if exc.status_code != 409:
            raise PlatformError(f"could not create account {username}: {exc}") from None
        if created:
            raise PlatformError(
                f"account {username} already exists but its password is not in {store.path}; "
                f"use another --state-dir, or restore that file"
            ) from None
        # Exists from an earlier `up`: the saved password is the one the agents will use.
        return False


def ensure_accounts(
    client: dcluster.Client, layout: state.Layout, *, providers: int, api_url: str, fingerprint: str | None = None
) -> set[int]:
    """Every local account, made where missing; returns the indexes of the provider accounts made now."""
    store = CredentialStore(layout.credentials_json)
    store.set_url(api_url, fingerprint)
    made_now: set[int] = set()
    for i in range(1, providers + 1):
        if _ensure_account(client, store, provider_username(i), domain.Role.PROVIDER.value):
            made_now.add(i)
    _ensure_account(client, store, BUYER_USERNAME, domain.Role.BUYER.value)
    return made_now
