"""The errors dcluster.Client raises: one root, an HTTP answer that is not a success, no answer at all."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Root of the errors dcluster.Client raises."""


class ApiError(ClientError):
    """The platform answered with a non-2xx status."""

    def __init__(self, status_code: int, detail: Any, *, retry_after_s: float | None = None):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after_s = retry_after_s

    @property
    def is_transient(self) -> bool:
        """Worth retrying as is: the platform is overloaded or failing, not refusing."""
        return self.status_code >= 500 or self.status_code in (408, 429)


class PlatformUnreachable(ClientError):
    """No HTTP answer at all: connection refused, DNS failure, timeout."""


class UntrustedPlatform(ClientError):
    """The server is not the platform the client trusts: a wrong fingerprint or a certificate the pinned
    authority did not issue. Never retried: waiting does not make it the right server."""


class InsecureTransport(ClientError):
    """Plain HTTP to another machine without --insecure."""


def is_transient(exc: BaseException) -> bool:
    """A brief hiccup of the platform (unreachable, 5xx, 408, 429), not a refusal."""
    return isinstance(exc, PlatformUnreachable) or (isinstance(exc, ApiError) and exc.is_transient)
