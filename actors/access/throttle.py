"""The platform's rate limiter: token buckets per key (an address, an account) or overall, and the sign-in/up limits."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

from actors.settings import PlatformSettings
from dcl_core import errors

# Per-address buckets kept at most; full (idle) ones are dropped first, so memory stays bounded
# under an address-spraying attack.
MAX_TRACKED_KEYS = 100_000
UNKNOWN_ADDRESS = "an unknown address"


@dataclasses.dataclass
class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; a request takes one (or more)."""

    rate_per_s: float
    burst: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate_per_s)
        self.updated = now

    def wait_s(self, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0: now)."""
        self.refill(now)
        return 0.0 if self.tokens >= cost else (cost - self.tokens) / self.rate_per_s


class Limit:
    """One named limit: a bucket per key (a client address), or a single one (key None)."""

    def __init__(
        self,
        what: str,
        per_minute: float,
        *,
        burst: float | None = None,
        keyed_by: str = "from",
        clock: Callable[[], float] = time.monotonic,
    ):
        if per_minute <= 0:
            raise ValueError("a limit must allow at least some requests a minute")
        self.what = what
        self.keyed_by = keyed_by  # how a refusal names the key: "from <address>", "for <account>"
        self.per_minute = per_minute
        self.rate_per_s = per_minute / 60.0
        self.burst = float(burst if burst is not None else per_minute)
        self._clock = clock
        self._buckets: dict[str | None, TokenBucket] = {}

    def tracked_keys(self) -> int:
        """How many keys (addresses, accounts) the limit holds a bucket for: bounded by MAX_TRACKED_KEYS."""
        return len(self._buckets)

    def _bucket(self, key: str | None) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_KEYS:
                self._forget_idle()
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, self.burst, self._clock())
        return bucket

    def _forget_idle(self) -> None:
        now = self._clock()
        for key in [k for k, b in self._buckets.items() if b.wait_s(now, b.burst) == 0]:
            del self._buckets[key]
        if len(self._buckets) >= MAX_TRACKED_KEYS:  # all busy: forgetting some is kinder than growing
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]

    def wait_s(self, key: str | None) -> float:
        return self._bucket(key).wait_s(self._clock())

    def take(self, key: str | None) -> None:
        bucket = self._bucket(key)
        bucket.refill(self._clock())
        bucket.tokens -= 1.0

    def give_back(self, key: str | None) -> None:
        bucket = self._bucket(key)
        bucket.refill(self._clock())
        bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)

    def forget(self, key: str | None) -> None:
        """The key starts again with a full bucket."""
        self._buckets.pop(key, None)

    def refusal(self, key: str | None, wait_s: float) -> errors.RateLimited:
        retry = max(1, math.ceil(wait_s))
        where = f" {self.keyed_by} {key}" if key is not None else " on this platform (all clients together)"
        return errors.RateLimited(
            f"too many {self.what}{where}: the limit is {self.per_minute:g} a minute; try again in {retry} s",
            retry_after_s=retry,
            limit=self.what,
        )


def take_all(*limits: tuple[Limit, str | None]) -> None:
    """Takes a token from each (limit, key), or from none of them: 429 naming the first limit hit."""
    for limit, key in limits:
        wait = limit.wait_s(key)
        if wait > 0:
            raise limit.refusal(key, wait)
    for limit, key in limits:
        limit.take(key)


class AuthThrottle:
    """What bounds the bcrypt work strangers can cause.

    Sign-in: an attempt takes a token of its address's failed-sign-in bucket, given back when it
    succeeds, so only failures (a username spray, a password guesser) run it dry; every attempt
    takes one of the platform-wide hash budget. Sign-up: a token per address and one overall, and
    one of the same hash budget.
    """

    def __init__(
        self,
        *,
        login_failures_per_address_per_minute: float,
        signups_per_address_per_minute: float,
        signups_per_minute: float,
        password_hashes_per_minute: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.login_failures = Limit("failed sign-ins", login_failures_per_address_per_minute, clock=clock)
        self.signups_by_address = Limit("sign-ups", signups_per_address_per_minute, clock=clock)
        self.signups = Limit("sign-ups", signups_per_minute, clock=clock)
        # A burst of a tenth of a minute's budget: a crowd of agents signing in after a restart
        # passes, a flood cannot queue more than a few seconds of hashing.
        self.hashes = Limit(
            "password checks (sign-ins and sign-ups)",
            password_hashes_per_minute,
            burst=max(1.0, password_hashes_per_minute / 6),
            clock=clock,
        )

    @classmethod
    def from_settings(cls, settings: PlatformSettings, clock: Callable[[], float] = time.monotonic) -> AuthThrottle:
        return cls(
            login_failures_per_address_per_minute=settings.login_failures_per_address_per_minute,
            signups_per_address_per_minute=settings.signups_per_address_per_minute,
            signups_per_minute=settings.signups_per_minute,
            password_hashes_per_minute=settings.password_hashes_per_minute,
            clock=clock,
        )

    def begin_login(self, address: str | None) -> None:
        take_all((self.login_failures, address or UNKNOWN_ADDRESS), (self.hashes, None))

    def login_succeeded(self, address: str | None) -> None:
        self.login_failures.give_back(address or UNKNOWN_ADDRESS)

    def begin_signup(self, address: str | None) -> None:
        take_all((self.signups_by_address, address or UNKNOWN_ADDRESS), (self.signups, None), (self.hashes, None))
