"""PlatformError: an expected failure of `dcluster up/down/status`."""

from __future__ import annotations


class PlatformError(Exception):
    """An expected failure of `dcluster up/down/status`: a one-line message that says what to do,
    and optional details (a log tail) for the reader."""

    def __init__(self, message: str, *, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
