"""The CLI's exit codes (a script can rely on them), its error type, and how a failure becomes a code and a message."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import dcluster
from cli import output


class Exit(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    CONFLICT = 5
    CLUSTER_ENDED = 6
    UNREACHABLE = 7
    TIMEOUT = 8


HTTP_EXIT = {400: Exit.USAGE, 401: Exit.AUTH, 404: Exit.NOT_FOUND, 409: Exit.CONFLICT, 422: Exit.USAGE}


class CliError(Exception):
    """A failure with the message to print and the exit code to return."""

    def __init__(self, message: str, code: Exit = Exit.ERROR, **fields: Any):
        super().__init__(message)
        self.message = message
        self.code = code
        self.fields = fields


def exit_code_for(exc: BaseException) -> Exit:
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, dcluster.ApiError):
        return HTTP_EXIT.get(exc.status_code, Exit.ERROR)
    if isinstance(exc, dcluster.PlatformUnreachable):
        return Exit.UNREACHABLE
    return Exit.ERROR


def error_message(exc: BaseException, field_names: Mapping[str, str] | None = None) -> str:
    if isinstance(exc, CliError):
        return exc.message
    if isinstance(exc, dcluster.ApiError):
        text = output.detail_text(exc.detail, field_names)
        if exc.status_code == 401:
            return f"the platform refused the session ({text}); run `dcluster login`"
        if exc.status_code == 429 and exc.retry_after_s:
            return f"{text} (retry in {exc.retry_after_s:.0f} s)"
        return text
    if isinstance(exc, dcluster.PlatformUnreachable):
        return f"the platform is unreachable ({exc}); is it up, and is the URL of `dcluster login` right?"
    return str(exc)
