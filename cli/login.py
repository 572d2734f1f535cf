"""`dcluster login/logout`: sign in to a platform and keep the session (never the password), or forget it."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path

import dcluster
from cli import exits, output, session
from cli.exits import CliError, Exit
from dcl_core import domain

_guarded = exits.guarded()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            text = sys.stdin.read() if str(args.password_file) == "-" else Path(args.password_file).read_text()
        except OSError as exc:
            raise CliError(f"cannot read the password file: {exc}", Exit.USAGE) from None
        return text.rstrip("\r\n")
    if os.environ.get("DCLUSTER_PASSWORD"):
        return os.environ["DCLUSTER_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.username}: ")
    raise CliError(
        "no password: use --password-file FILE (- for stdin), set DCLUSTER_PASSWORD, or run in a terminal", Exit.USAGE
    )


@_guarded
def cmd_login(args: argparse.Namespace) -> int:
    try:
        previous = session.read_session()
    except CliError:
        previous = None
    url = args.url or os.environ.get("DCLUSTER_URL") or (previous.url if previous else None)
    if not url:
        raise CliError("no platform URL: pass --url URL (or set DCLUSTER_URL)", Exit.USAGE)
    args.username = args.username or (previous.username if previous else None)
    if not args.username:
        raise CliError("no username: pass --username NAME", Exit.USAGE)
    password = _read_password(args)
    with session.new_client(url) as client:
        try:
            body = client.request(
                "POST", "/v1/token", auth=False, data={"username": args.username, "password": password}
            )
        except dcluster.ApiError as exc:
            if exc.status_code == 401:
                raise CliError(f"sign-in refused: {output.detail_text(exc.detail)}", Exit.AUTH) from None
            raise
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CliError("the platform's token answer has no access_token")
        client.set_token(token)
        me = client.me()
    role = me.get("role") if isinstance(me, dict) else None
    saved = session.Session(
        url=client.base_url,
        username=args.username,
        token=token,
        expires_at=time.time() + float(body.get("expires_in") or 1800),
        role=role,
    )
    path = session.save_session(saved)
    if args.json:
        output.print_json({**saved.public(), "session_file": str(path)})
    else:
        print(
            f"signed in to {saved.url} as {saved.username} ({role}); "
            f"session valid until {output.clock_time(saved.expires_at)}"
        )
    if role is not None and role not in [r.value for r in domain.Role if r.may_hold_clusters()]:
        output.progress(f"note: {saved.username} is a {role} account; cluster commands need a buyer account")
    return Exit.OK


@_guarded
def cmd_logout(args: argparse.Namespace) -> int:
    path = session.session_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    if args.json:
        output.print_json({"signed_out": existed, "session_file": str(path)})
    else:
        print("signed out" if existed else "not signed in")
    return Exit.OK


def add_login(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("login", **exits.parser_kw("sign in to a platform and keep the session (never the password)"))
    p.add_argument(
        "--url",
        help="the platform's API URL, e.g. http://127.0.0.1:8000 (default: $DCLUSTER_URL, else the last session's)",
    )
    p.add_argument("--username", help="account name (default: the last session's)")
    p.add_argument(
        "--password-file", help="read the password from this file (- for stdin); else $DCLUSTER_PASSWORD, else a prompt"
    )
    exits.json_arg(p)
    return p


def add_logout(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("logout", **exits.parser_kw("forget the saved session"))
    exits.json_arg(p)
    return p
