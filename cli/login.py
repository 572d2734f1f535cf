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
from dcluster import tls as client_tls

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


def _trust(url: str, args: argparse.Namespace, previous: session.Session | None) -> dcluster.Trust:
    """The certificate authority to pin: the one whose fingerprint the user gave (checked against what the
    platform publishes), the one first seen when told --trust-on-first-use, the last session's for the same URL;
    else the system's trust store."""
    if args.fingerprint and args.trust_on_first_use:
        raise CliError("--fingerprint and --trust-on-first-use exclude each other: give one", Exit.USAGE)
    if not url.startswith("https://"):
        if args.fingerprint or args.trust_on_first_use:
            raise CliError(f"{url} is plain HTTP: a certificate fingerprint means nothing there", Exit.USAGE)
        return dcluster.Trust()
    if args.fingerprint:
        try:
            expected = client_tls.parse_fingerprint(args.fingerprint)
        except ValueError as exc:
            raise CliError(f"--fingerprint: {exc}", Exit.USAGE) from None
        return dcluster.Trust(ca_pem=client_tls.fetch_ca(url, expected=expected))
    if args.trust_on_first_use:
        ca_pem = client_tls.fetch_ca(url, expected=None)
        output.progress(
            f"trusting {url}'s certificate authority {client_tls.fingerprint(ca_pem)} on first use: "
            "compare it with what the platform's operator gave you"
        )
        return dcluster.Trust(ca_pem=ca_pem)
    if previous is not None and previous.url == url.rstrip("/") and previous.ca_pem:
        return previous.trust()
    return dcluster.Trust()


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
    same_platform = previous is not None and previous.url == url.rstrip("/")
    insecure = args.insecure or (same_platform and previous is not None and previous.insecure)
    client_tls.refuse_plain_http(url, insecure=insecure)
    trust = _trust(url, args, previous)
    password = _read_password(args)
    with session.new_client(url, trust) as client:
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
        ca_pem=trust.ca_pem,
        insecure=insecure,
    )
    path = session.save_session(saved)
    if args.json:
        output.print_json({**saved.public(), "session_file": str(path)})
    else:
        pinned = f"; certificate authority {trust.fingerprint} pinned" if trust.ca_pem else ""
        print(
            f"signed in to {saved.url} as {saved.username} ({role}); "
            f"session valid until {output.clock_time(saved.expires_at)}{pinned}"
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
        help="the platform's API URL, e.g. https://platform.example.com:8000 "
        "(default: $DCLUSTER_URL, else the last session's)",
    )
    p.add_argument("--username", help="account name (default: the last session's)")
    p.add_argument(
        "--fingerprint",
        metavar="SHA256:HEX",
        help="the platform's certificate authority fingerprint (`dcluster up`/`dcluster status` print it): "
        "checked now, then pinned with the session; every later call must present a certificate it issued",
    )
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="pin whatever certificate authority the platform presents now (prints its fingerprint to compare)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain http:// to another machine (the password and tokens cross the network unencrypted)",
    )
    p.add_argument(
        "--password-file", help="read the password from this file (- for stdin); else $DCLUSTER_PASSWORD, else a prompt"
    )
    exits.json_arg(p)
    return p


def add_logout(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("logout", **exits.parser_kw("forget the saved session"))
    exits.json_arg(p)
    return p
