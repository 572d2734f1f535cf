"""Passwords (bcrypt), JWTs (HS256), the JWT secret file, and the failed-login limiter."""

from __future__ import annotations

import dataclasses
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import bcrypt
import jwt

from actors.access import throttle
from dcl_core import api, domain, errors, secret_files

JWT_ALGORITHM = "HS256"
JWT_SECRET_ENV = "DCLUSTER_JWT_SECRET"
JWT_SECRET_FILE = "jwt_secret"
MIN_SECRET_BYTES = 32


class PasswordHasher:
    """bcrypt hashing; callers run it off the event loop (it is slow on purpose).

    The hashes are the modular-crypt `$2b$<rounds>$...` strings passlib wrote before, so hashes
    stored by earlier versions verify unchanged (the bcrypt library reads its own format)."""

    def __init__(self, rounds: int = 12):
        self._rounds = rounds
        # A fixed hash to verify against when the user does not exist, so that
        # unknown usernames cost as much time as wrong passwords.
        self._dummy_hash = self.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        secret = _password_bytes(password)
        return bcrypt.hashpw(secret, bcrypt.gensalt(rounds=self._rounds)).decode("ascii")

    def verify(self, password: str, password_hash: str | None) -> bool:
        secret = _password_bytes(password)
        if password_hash is None:
            bcrypt.checkpw(secret, self._dummy_hash.encode("ascii"))
            return False
        return bcrypt.checkpw(secret, password_hash.encode("ascii"))


def _password_bytes(password: str) -> bytes:
    # bcrypt raises ValueError on these; callers get the domain's 400 instead of a crash.
    if "\x00" in password:
        raise errors.InvalidInput("a password must not contain NUL characters")
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidInput("a password must be valid Unicode text (no lone surrogates)") from None
    if len(secret) > api.MAX_PASSWORD_BYTES:  # bcrypt reads 72 bytes at most (and the library refuses more)
        raise errors.InvalidInput(f"a password must be at most {api.MAX_PASSWORD_BYTES} bytes (UTF-8)")
    return secret


def load_or_create_jwt_secret(state_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """The signing secret: from the environment if set, else from a 0600 file made on first start."""
    from_env = (os.environ if environ is None else environ).get(JWT_SECRET_ENV)
    if from_env:
        if len(from_env.encode()) < MIN_SECRET_BYTES:
            raise errors.InvalidInput(f"{JWT_SECRET_ENV} must be at least {MIN_SECRET_BYTES} bytes long")
        return from_env
    path = Path(state_dir) / JWT_SECRET_FILE
    if path.exists():
        secret_files.restrict_to_owner(path)
        return path.read_text().strip()
    secret_files.write_secret_file(path, secrets.token_urlsafe(48))
    return path.read_text().strip()


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling, as proven by a verified token."""

    account_id: int
    username: str
    role: domain.Role
    # Set for a token scoped to one buyer cluster (its node provider's credential).
    cluster_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "username": self.username,
            "role": self.role.value,
            "cluster_id": self.cluster_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Principal:
        return cls(int(data["account_id"]), data["username"], domain.Role(data["role"]), data.get("cluster_id"))


def check_role(principal: Principal, *roles: domain.Role) -> None:
    """Forbidden unless the principal holds one of the roles: every route's role check (the API's and the actors')."""
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise errors.Forbidden(f"this route is for {allowed} accounts; you are signed in as {principal.role.value}")


def check_account_token(principal: Principal) -> None:
    """Forbidden for a cluster-scoped token (a cluster's node-provider credential): it calls the node routes alone."""
    if principal.cluster_id is not None:
        raise errors.Forbidden("a cluster-scoped token cannot call this route")


TOKEN_EXPIRED = "token expired: sign in again at POST /v1/token"

# Verified tokens kept per issuer: every client and agent in use at once, many times over.
VERIFIED_CACHE_SIZE = 10_000


class TokenIssuer:
    """Issues and verifies the platform's JWTs.

    A token that verified once is remembered, by its text, until its `exp` (bounded, oldest out
    first): checking the signature again is most of the CPU an API read costs, and a JWT's claims
    cannot change. Tokens are never revoked one by one (rotating the secret makes a new issuer),
    so a cached answer is the answer verification would give."""

    def __init__(
        self,
        secret: str,
        *,
        ttl_s: int = 1800,
        clock: Callable[[], float] = time.time,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ):
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache_size = cache_size
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._verified_lock = threading.Lock()  # the API replica verifies on two event loops' threads

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def issue(self, principal: Principal, ttl_s: int | None = None) -> str:
        now = int(self._clock())
        claims = {
            "sub": str(principal.account_id),
            "name": principal.username,
            "role": principal.role.value,
            "iat": now,
            "exp": now + (ttl_s or self._ttl_s),
            "jti": uuid.uuid4().hex,
        }
        if principal.cluster_id:
            claims["cluster"] = principal.cluster_id
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            principal, exp = known
            if exp < self._clock():
                with self._verified_lock:
                    self._verified.pop(token, None)
                raise errors.Unauthenticated(TOKEN_EXPIRED)
            return principal
        principal, exp = self._verify_signed(token)
        with self._verified_lock:
            if len(self._verified) >= self._cache_size:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (principal, exp)
        return principal

    def _verify_signed(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                # PyJWT checks times against the wall clock; ours is injected, so check them here.
                options={"require": ["sub", "role", "exp", "iat", "jti"], "verify_exp": False, "verify_iat": False},
            )
            if claims["exp"] < self._clock():
                raise jwt.ExpiredSignatureError("expired")
            return (
                Principal(
                    int(claims["sub"]), str(claims.get("name", "")), domain.Role(claims["role"]), claims.get("cluster")
                ),
                claims["exp"],
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated(TOKEN_EXPIRED) from None
        except (jwt.InvalidTokenError, ValueError, KeyError):
            raise errors.Unauthenticated("invalid token: sign in at POST /v1/token") from None


class LoginLimiter:
    """At most `max_failures` failed sign-ins per username a `window_s`, refilled evenly (a throttle.Limit); then 429.

    A success forgets the username's failures."""

    def __init__(self, *, max_failures: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._failures = throttle.Limit(
            "failed sign-ins", max_failures * 60.0 / window_s, burst=max_failures, keyed_by="for account", clock=clock
        )

    def check(self, username: str) -> None:
        wait = self._failures.wait_s(username)
        if wait > 0:
            raise self._failures.refusal(username, wait)

    def record_failure(self, username: str) -> None:
        self._failures.take(username)

    def record_success(self, username: str) -> None:
        self._failures.forget(username)
