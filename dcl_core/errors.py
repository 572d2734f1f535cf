"""Domain exceptions: one root, a few kinds; the HTTP edge maps each kind to a status code."""

from __future__ import annotations

from typing import Any


class DClusterError(Exception):
    """Root of every error the control plane raises on purpose."""

    http_status = 400

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class InvalidInput(DClusterError):
    http_status = 400


class Unauthenticated(DClusterError):
    http_status = 401


class Forbidden(DClusterError):
    http_status = 403


class NotFound(DClusterError):
    http_status = 404


class Conflict(DClusterError):
    http_status = 409


class UpgradeRequired(DClusterError):
    """The caller speaks another version of the agents' protocol (dcl_core.protocol.PROTOCOL_VERSION)."""

    http_status = 426


class BadGateway(DClusterError):
    """A buyer cluster's node, reached through the platform, did not answer (or answered past the bounds)."""

    http_status = 502


class RateLimited(DClusterError):
    http_status = 429

    # A default keeps the exception picklable: Ray rebuilds it as cls(message), then restores __dict__.
    def __init__(self, message: str, *, retry_after_s: int = 60, **fields: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **fields)
        self.retry_after_s = retry_after_s
