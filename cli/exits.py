"""The CLI's exit codes (a script can rely on them), its error type, and how a failure becomes a code and a message.

Exit codes:
  0  ok
  1  error from the platform, or unexpected
  2  usage error: bad arguments, or a request the platform rejects as invalid (HTTP 400/422)
  3  not signed in, or the session expired or was refused: run `dcluster login`
  4  not found (no such cluster, or not yours)
  5  conflict, e.g. not enough capacity (the platform's detail is printed) or past the maximum lifetime
  6  the cluster ended (failed, expired, deleted) while waiting for it to run
  7  the platform is unreachable
  8  timed out waiting (--timeout); the cluster is left as it is

They are defined once, in `Exit` and `HTTP_EXIT`; `exit_code_for` maps every failure to one.
"""

from __future__ import annotations

import argparse
import enum
import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

import dcluster
from cli import output

EXIT_CODES_HELP = __doc__.split("\n\n")[1]


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
    if isinstance(exc, dcluster.InsecureTransport):
        return Exit.USAGE
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


Handler = Callable[[argparse.Namespace], int]


def guarded(field_names: Mapping[str, str] | None = None) -> Callable[[Handler], Handler]:
    """Turns every expected failure of a command into its exit code and one line on stderr (and JSON on stdout
    with --json); field_names: request fields → the flags that set them, so validation errors name the flag."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            try:
                return int(fn(args))
            except (CliError, dcluster.ClientError) as exc:
                code = exit_code_for(exc)
                message = error_message(exc, field_names)
                if getattr(args, "json", False):
                    body: dict[str, Any] = {"error": message, "exit_code": int(code)}
                    if isinstance(exc, dcluster.ApiError):
                        body["status_code"] = exc.status_code
                    if isinstance(exc, CliError) and "cluster" in exc.fields:
                        body["cluster"] = exc.fields["cluster"]
                    output.print_json(body)
                name = " ".join(x for x in (args.command, getattr(args, "cluster_command", None)) if x)
                print(f"dcluster {name}: error: {message}", file=sys.stderr)
                return int(code)

        return run

    return wrap


def parser_kw(help_text: str) -> dict:
    """add_parser's arguments for a command whose help ends with the exit codes."""
    return {
        "help": help_text,
        "description": help_text,
        "epilog": EXIT_CODES_HELP,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (progress goes to stderr)")
