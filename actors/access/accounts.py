"""Accounts: creating them, signing in (rate-limited, bcrypt off the event loop), the JWTs they get, the admin."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from actors import metrics as metrics_mod
from actors.access import auth, platform_secrets
from actors.access import throttle as throttle_mod
from actors.db import store as store_mod
from actors.settings import PlatformSettings
from dcl_core import domain, errors

logger = logging.getLogger(__name__)
T = TypeVar("T")

ADMIN_USERNAME = "admin"


class Accounts:
    """The ProviderRegistry's accounts part: plain class, given the store, settings, hasher and limits."""

    def __init__(
        self,
        store: store_mod.Store,
        settings: PlatformSettings,
        *,
        secrets: platform_secrets.Secrets,
        metrics: metrics_mod.Metrics,
        clock: Callable[[], float] = time.time,
        hasher: auth.PasswordHasher | None = None,
        limiter: auth.LoginLimiter | None = None,
        throttle: throttle_mod.AuthThrottle | None = None,
    ):
        self._store = store
        self._settings = settings
        self._secrets = secrets
        self._metrics = metrics
        self._clock = clock
        self._hasher = hasher or auth.PasswordHasher(rounds=settings.bcrypt_rounds)
        self._limiter = limiter or auth.LoginLimiter(max_failures=settings.login_max_failures_per_minute)
        self._throttle = throttle or throttle_mod.AuthThrottle.from_settings(settings)
        # bcrypt runs in threads; this bounds how many cores it may take at once.
        self._hash_slots = asyncio.Semaphore(settings.password_hash_threads)
        self._tokens: auth.TokenIssuer | None = None

    async def start(self) -> None:
        """Recover from the database (its connection open): the signing secret, the bootstrap admin."""
        secret = await self._secrets.signing_secret()
        self._tokens = auth.TokenIssuer(secret, ttl_s=self._settings.token_ttl_s, clock=self._clock)
        await self._ensure_admin()

    async def _ensure_admin(self) -> None:
        if await self._store.count_accounts(domain.Role.ADMIN):
            await self._secrets.restore_admin_credentials_file()
            return
        password = secrets.token_urlsafe(18)
        password_hash = await self._run_hasher(self._hasher.hash, password)
        await self._store.create_account(ADMIN_USERNAME, password_hash, domain.Role.ADMIN, self._clock())
        await self._secrets.save_admin_credentials({"username": ADMIN_USERNAME, "password": password})
        logger.info("created the bootstrap admin account; credentials in %s", self._settings.admin_credentials_path)

    def signing_secret(self) -> str:
        """For the API replicas, which verify tokens themselves (no actor hop per request)."""
        return self._tokens_or_fail()._secret

    def _tokens_or_fail(self) -> auth.TokenIssuer:
        if self._tokens is None:
            raise RuntimeError("accounts not started")
        return self._tokens

    async def _run_hasher(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._hash_slots:
            return await asyncio.to_thread(fn, *args)

    async def create_account(
        self,
        username: str,
        password: str,
        role: domain.Role,
        by: auth.Principal | None = None,
        client: str | None = None,
    ) -> dict[str, Any]:
        """`client`: the caller's address, for the sign-up limits (admins are not limited)."""
        role = domain.Role(role)
        by_admin = by is not None and by.role is domain.Role.ADMIN
        if role is domain.Role.ADMIN and not by_admin:
            raise errors.Forbidden("only an admin can create admin accounts")
        if not by_admin:
            self._throttle.begin_signup(client)
        password_hash = await self._run_hasher(self._hasher.hash, password)
        row = await self._store.create_account(username, password_hash, role, self._clock())
        logger.info("account %s created with role %s", username, role.value)
        return _public_account(row)

    async def login(self, username: str, password: str, client: str | None = None) -> dict[str, Any]:
        """`client`: the caller's address, for the per-address limit of failed sign-ins."""
        try:
            self._limiter.check(username)
            self._throttle.begin_login(client)
        except errors.RateLimited:
            self._metrics.sign_in_failed(throttled=True)
            raise
        row = await self._store.get_account_by_username(username)
        ok = await self._run_hasher(self._hasher.verify, password, row["password_hash"] if row else None)
        if not ok or row is None:
            self._limiter.record_failure(username)
            self._metrics.sign_in_failed(throttled=False)
            raise errors.Unauthenticated("wrong username or password")
        self._limiter.record_success(username)
        self._throttle.login_succeeded(client)
        principal = auth.Principal(row["id"], row["username"], domain.Role(row["role"]))
        tokens = self._tokens_or_fail()
        return {"access_token": tokens.issue(principal), "token_type": "bearer", "expires_in": tokens.ttl_s}

    async def get_account(self, principal: auth.Principal) -> dict[str, Any]:
        row = await self._store.get_account(principal.account_id)
        if row is None:
            raise errors.Unauthenticated("this account no longer exists")
        return _public_account(row)

    async def list_accounts(self, principal: auth.Principal) -> list[dict[str, Any]]:
        """Every account (admins only); never a password hash."""
        auth.check_role(principal, domain.Role.ADMIN)
        return [_public_account(row) for row in await self._store.list_accounts()]


def _public_account(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "username": row["username"], "role": row["role"], "created_at": row["created_at"]}
