"""`dcluster login/logout/cluster ...`: the buyer's commands, their session file and their exit codes.

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
import functools
import getpass
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dcluster
from cli import dashboard_forward, output, terminal
from cli.exits import CliError, Exit, error_message, exit_code_for
from cli.session import Session, current_session, read_session, save_session, session_path
from dcl_core import domain

EXIT_CODES_HELP = __doc__.split("\n\n")[1]

POLL_INTERVAL_S = 1.0
# The waits' clock and sleep (tests replace both with a fake clock).
MONOTONIC: Callable[[], float] = time.monotonic
SLEEP: Callable[[float], None] = time.sleep
DEFAULT_WAIT_TIMEOUT_S = 600.0

# Statuses in which a cluster takes jobs (degraded: a worker's machine was lost; the rest runs).
USABLE = (domain.ClusterStatus.RUNNING.value, domain.ClusterStatus.DEGRADED.value)

# Request fields → the flags that set them, so that the platform's validation errors name the flag.
CREATE_FLAGS = {
    "num_workers": "--workers",
    "gpus_per_worker": "--gpus",
    "gpu_model": "--gpu-model",
    "cpus_per_worker": "--cpus",
    "duration_s": "--duration",
    "name": "--name",
    "max_price_per_gpu_hour": "--max-price-per-gpu-hour",
    "max_price_per_cpu_hour": "--max-price-per-cpu-hour",
    "min_reliability": "--min-reliability",
    "verified_gpus_only": "--verified-gpus-only",
}


# --- durations --------------------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_S = (86400, 3600, 60, 1)


def parse_duration(text: str) -> int:
    """'30m' → 1800, '2h' → 7200, '1h30m' → 5400, '90s' → 90, '3600' → 3600 (plain numbers are seconds)."""
    value = str(text).strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        match = _DURATION.fullmatch(value)
        if not value or not match or not any(match.groups()):
            raise ValueError(f"invalid duration {text!r}: use seconds (3600) or d/h/m/s units (30m, 2h, 1h30m, 90s)")
        seconds = sum(int(g) * unit for g, unit in zip(match.groups(), _UNIT_S, strict=True) if g)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be longer than 0 s")
    return seconds


def _duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- session ----------------------------------------------------------------------------


def new_client(base_url: str) -> dcluster.Client:
    """Every command's HTTP client (tests replace this factory with one on a mock transport)."""
    return dcluster.Client(base_url)


def signed_in_client() -> dcluster.Client:
    session = current_session()
    client = new_client(session.url)
    client.set_token(session.token)
    return client


# --- the platform's cluster API ---------------------------------------------------------


def cluster_body(args: argparse.Namespace) -> dict:
    body: dict[str, Any] = {
        "num_workers": args.workers,
        "gpus_per_worker": args.gpus,
        "cpus_per_worker": args.cpus,
        "duration_s": args.duration,
        "backend": args.backend,
    }
    if args.gpu_model:
        body["gpu_model"] = args.gpu_model
    if args.name:
        body["name"] = args.name
    for field in ("max_price_per_gpu_hour", "max_price_per_cpu_hour", "min_reliability"):
        if getattr(args, field, None) is not None:
            body[field] = getattr(args, field)
    if getattr(args, "verified_gpus_only", False):
        body["verified_gpus_only"] = True
    return body


class ClusterWatcher:
    """Follows one cluster: its new events (after the last id seen) and its status, until a condition holds."""

    def __init__(
        self,
        client: dcluster.Client,
        cluster_id: str,
        on_event: Callable[[dict], None] | None = None,
        *,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        on_cluster: Callable[[dict], None] | None = None,
    ):
        self.client = client
        self.cluster_id = cluster_id
        self.on_event = on_event or (lambda e: None)
        self.on_cluster = on_cluster or (lambda c: None)
        self.after = 0
        self.events: list[dict] = []
        # Looked up at call time, so that tests can swap the module's clock for a fake one.
        self._sleep = sleep or SLEEP
        self._clock = clock or MONOTONIC

    def drain_events(self) -> list[dict]:
        new = self.client.cluster_events(self.cluster_id, after=self.after)
        for event in new:
            self.after = max(self.after, int(event.get("id", 0)))
            self.events.append(event)
            self.on_event(event)
        return new

    def skip_past_events(self) -> None:
        """From now on, report only events newer than the ones that exist already."""
        on_event, self.on_event = self.on_event, (lambda e: None)
        try:
            self.drain_events()
        finally:
            self.on_event = on_event
        self.events.clear()

    def cluster(self) -> dict:
        return self.client.get_cluster(self.cluster_id)

    def until(self, done: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
        """Polls status then events until done(cluster); the platform's brief hiccups (5xx, 429,
        unreachable) are retried until the deadline. Raises CliError(TIMEOUT) past it."""
        deadline = self._clock() + timeout_s
        last_error: dcluster.ClientError | None = None
        while True:
            try:
                cluster = self.cluster()
                self.drain_events()
                self.on_cluster(cluster)
                last_error = None
                if done(cluster):
                    return cluster
            except dcluster.ClientError as exc:
                transient = isinstance(exc, dcluster.PlatformUnreachable) or (
                    isinstance(exc, dcluster.ApiError) and exc.is_transient
                )
                if not transient:
                    raise
                last_error = exc
            if self._clock() >= deadline:
                if last_error is not None:
                    raise last_error
                raise CliError(
                    f"timed out after {timeout_s:.0f} s waiting for cluster {self.cluster_id} to "
                    f"{what}; it is {cluster['status']} and left as it is",
                    Exit.TIMEOUT,
                    cluster=cluster,
                )
            self._sleep(POLL_INTERVAL_S)

    def wait_running(self, timeout_s: float) -> dict:
        cluster = self.until(lambda c: c["status"] in USABLE or not output.is_active(c["status"]), timeout_s, "run")
        if cluster["status"] not in USABLE:
            reason = cluster.get("reason") or "no reason given"
            raise CliError(
                f"cluster {self.cluster_id} is {cluster['status']} instead of running: {reason}",
                Exit.CLUSTER_ENDED,
                cluster=cluster,
            )
        return cluster

    def wait_ended(self, timeout_s: float) -> dict:
        return self.until(lambda c: output.is_terminal(c["status"]), timeout_s, "end")


# --- commands ---------------------------------------------------------------------------


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns every expected failure into its exit code and one line on stderr (and JSON on stdout with --json)."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (CliError, dcluster.ClientError) as exc:
            code = exit_code_for(exc)
            message = error_message(exc, CREATE_FLAGS)
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
        previous = read_session()
    except CliError:
        previous = None
    url = args.url or os.environ.get("DCLUSTER_URL") or (previous.url if previous else None)
    if not url:
        raise CliError("no platform URL: pass --url URL (or set DCLUSTER_URL)", Exit.USAGE)
    args.username = args.username or (previous.username if previous else None)
    if not args.username:
        raise CliError("no username: pass --username NAME", Exit.USAGE)
    password = _read_password(args)
    with new_client(url) as client:
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
    session = Session(
        url=client.base_url,
        username=args.username,
        token=token,
        expires_at=time.time() + float(body.get("expires_in") or 1800),
        role=role,
    )
    path = save_session(session)
    if args.json:
        output.print_json({**session.public(), "session_file": str(path)})
    else:
        print(
            f"signed in to {session.url} as {session.username} ({role}); "
            f"session valid until {output.clock_time(session.expires_at)}"
        )
    if role is not None and role not in [r.value for r in domain.Role if r.may_hold_clusters()]:
        output.progress(f"note: {session.username} is a {role} account; cluster commands need a buyer account")
    return Exit.OK


@_guarded
def cmd_logout(args: argparse.Namespace) -> int:
    path = session_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    if args.json:
        output.print_json({"signed_out": existed, "session_file": str(path)})
    else:
        print("signed out" if existed else "not signed in")
    return Exit.OK


@_guarded
def cmd_create(args: argparse.Namespace) -> int:
    with signed_in_client() as client:
        cluster = client.create_cluster(**cluster_body(args))
        cid = cluster["id"]
        if not args.wait:
            if args.json:
                output.print_json(cluster)
            else:
                print(output.cluster_summary(cluster, time.time()))
                output.progress(f"follow it with: dcluster cluster events {cid} --follow")
            return Exit.OK
        output.progress(f"cluster {cid} requested; waiting up to {args.timeout:.0f} s for it to run")
        with terminal.ClusterProgress(f"waiting for {cid} to run") as shown:
            watcher = ClusterWatcher(client, cid, shown.event, on_cluster=shown.cluster)
            cluster = watcher.wait_running(args.timeout)
        connection = client.cluster_connection(cid)
    if args.json:
        output.print_json({**cluster, "connection": connection})
    else:
        output.progress(output.cluster_summary(cluster, time.time()))  # a degraded one says why
        output.progress(f'its environment (for `eval "$(dcluster cluster connect {cid})"`):')
        print("\n".join(output.export_lines(connection["env"])))
    return Exit.OK


@_guarded
def cmd_list(args: argparse.Namespace) -> int:
    with signed_in_client() as client:
        clusters = client.list_clusters()
    if args.json:
        output.print_json(clusters)
    elif clusters:
        terminal.print_table(output.CLUSTER_HEADERS, output.cluster_rows(clusters, time.time()))
    else:
        print("no clusters")
    return Exit.OK


@_guarded
def cmd_status(args: argparse.Namespace) -> int:
    with signed_in_client() as client:
        cluster = client.get_cluster(args.cluster_id)
    if args.json:
        output.print_json(cluster)
    else:
        print(output.cluster_details(cluster, time.time()))
    return Exit.OK


@_guarded
def cmd_events(args: argparse.Namespace) -> int:
    def show(event: dict) -> None:
        if args.json and args.follow:
            output.print_json(event, compact=True)  # one object per line while following
        elif not args.json:
            print(output.event_line(event), flush=True)

    with signed_in_client() as client:
        watcher = ClusterWatcher(client, args.cluster_id, show)
        if not args.follow:
            watcher.drain_events()
            if args.json:
                output.print_json(watcher.events)
            return Exit.OK
        watcher.wait_ended(float("inf"))
        watcher.drain_events()
    return Exit.OK


@_guarded
def cmd_logs(args: argparse.Namespace) -> int:
    """The logs a cluster's nodes shipped as they were released: the index, one job's driver log, or one file."""
    with signed_in_client() as client:
        if args.job:
            text = client.cluster_job_log(args.cluster_id, args.job)
        elif args.file:
            text = client.cluster_log_file(args.cluster_id, args.file, node=args.node)
        else:
            files = client.cluster_logs(args.cluster_id)
            if args.json:
                output.print_json(files)
            elif not files:
                print(f"no logs kept for {args.cluster_id} (yet): each node ships its logs as it is released")
            else:
                terminal.print_table(
                    ["node", "role", "file", "size", "kept"],
                    [
                        [
                            f["lease_id"],
                            f["role"],
                            f["name"],
                            f["bytes"],
                            f"{f['kept_bytes']}{' (tail)' if f['truncated'] else ''}",
                        ]
                        for f in files
                    ],
                )
            return Exit.OK
    sys.stdout.write(text)
    return Exit.OK


@_guarded
def cmd_extend(args: argparse.Namespace) -> int:
    with signed_in_client() as client:
        try:
            cluster = client.extend_cluster(args.cluster_id, args.duration)
        except dcluster.ApiError as exc:
            if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
                raise CliError(
                    "this platform cannot extend clusters yet (POST /v1/clusters/{id}/extend "
                    f"answered {exc.status_code} {exc.detail})"
                ) from None
            raise
    if args.json:
        output.print_json(cluster)
    else:
        print(
            f"cluster {cluster['id']} now expires at {output.clock_time(cluster['expires_at'])} "
            f"(in {output.human_duration(cluster['expires_at'] - time.time())})"
        )
    return Exit.OK


@_guarded
def cmd_delete(args: argparse.Namespace) -> int:
    with signed_in_client() as client, terminal.ClusterProgress(f"deleting {args.cluster_id}") as shown:
        watcher = ClusterWatcher(client, args.cluster_id, shown.event, on_cluster=shown.cluster)
        if args.wait:
            watcher.skip_past_events()  # show the teardown, not the cluster's whole history
        cluster = client.delete_cluster(args.cluster_id)
        if args.wait and not output.is_terminal(cluster["status"]):
            shown.message(
                f"cluster {cluster['id']} is {cluster['status']}; waiting up to {args.timeout:.0f} s "
                f"for its nodes to be released"
            )
            cluster = watcher.wait_ended(args.timeout)
    if args.json:
        output.print_json(cluster)
    else:
        print(output.cluster_summary(cluster, time.time()))
    return Exit.OK


@_guarded
def cmd_connect(args: argparse.Namespace) -> int:
    with signed_in_client() as client:
        connection = client.cluster_connection(args.cluster_id)
    if args.json:
        output.print_json(connection)
        return Exit.OK
    print("\n".join(output.export_lines(connection["env"])))
    if sys.stdout.isatty():
        output.progress(
            f'# load it: eval "$(dcluster cluster connect {args.cluster_id})"; '
            f"then: ray job submit --working-dir . -- python your_script.py"
        )
    return Exit.OK


@_guarded
def cmd_dashboard(args: argparse.Namespace) -> int:
    with signed_in_client() as client:
        connection = client.cluster_connection(args.cluster_id)
    urls = {k: connection[k] for k in ("dashboard_url", "dashboard_proxy_url", "metrics_proxy_url")}
    if args.forward is not None:
        forward = dashboard_forward.DashboardForward(
            urls["dashboard_proxy_url"], current_session().token, port=args.forward
        )
        output.progress(
            f"the Ray dashboard of {args.cluster_id}, through the platform: {forward.url} "
            "(GET only; Ctrl-C stops; valid while your sign-in is)"
        )
        try:
            forward.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            forward.close()
        return Exit.OK
    if args.json:
        output.print_json(urls)
        return Exit.OK
    print(f"Ray dashboard (on the head):   {urls['dashboard_url']}")
    print(
        "  with the cluster's Ray token: Authorization: Bearer $RAY_AUTH_TOKEN "
        f'(eval "$(dcluster cluster connect {args.cluster_id})"), or paste it where the dashboard asks'
    )
    print(f"through the platform (GET):    {urls['dashboard_proxy_url']}")
    print(f"Prometheus metrics (head):     {urls['metrics_proxy_url']}   (?node=l-... for a worker)")
    print("  both with your platform token: Authorization: Bearer <token from dcluster login>")
    return Exit.OK


# --- parsers ----------------------------------------------------------------------------


def _parser_kw(help_text: str) -> dict:
    return {
        "help": help_text,
        "description": help_text,
        "epilog": EXIT_CODES_HELP,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (progress goes to stderr)")


def _wait_args(p: argparse.ArgumentParser, wait_help: str) -> None:
    p.add_argument("--wait", action="store_true", help=wait_help)
    p.add_argument(
        "--timeout",
        type=_duration_arg,
        default=DEFAULT_WAIT_TIMEOUT_S,
        help=f"how long --wait waits: seconds or 10m (default {DEFAULT_WAIT_TIMEOUT_S:.0f}; exit 8 past it)",
    )


def add_login(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("login", **_parser_kw("sign in to a platform and keep the session (never the password)"))
    p.add_argument(
        "--url",
        help="the platform's API URL, e.g. http://127.0.0.1:8000 (default: $DCLUSTER_URL, else the last session's)",
    )
    p.add_argument("--username", help="account name (default: the last session's)")
    p.add_argument(
        "--password-file", help="read the password from this file (- for stdin); else $DCLUSTER_PASSWORD, else a prompt"
    )
    _json_arg(p)
    return p


def add_logout(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("logout", **_parser_kw("forget the saved session"))
    _json_arg(p)
    return p


def add_cluster(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "cluster", **_parser_kw("buyer clusters: create, list, status, events, extend, delete, connect, dashboard")
    )
    csub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    c = csub.add_parser("create", **_parser_kw("ask for a Ray cluster of N workers for a while"))
    c.add_argument("--workers", type=int, required=True, help="worker nodes (the head is extra)")
    c.add_argument("--gpus", type=int, default=0, help="GPUs on each worker (default 0)")
    c.add_argument("--gpu-model", help="exact GPU model, e.g. 'NVIDIA A100-SXM4-80GB' (default: any)")
    c.add_argument("--cpus", type=int, default=1, help="CPUs on each worker (default 1)")
    c.add_argument(
        "--duration", type=_duration_arg, default=3600, help="lifetime: 30m, 2h, 1h30m, 90s or seconds (default 1h)"
    )
    c.add_argument("--name", help="display name: 1-40 of [a-z0-9-]")
    c.add_argument("--backend", choices=("market", "aws"), default="market", help="where nodes run (default market)")
    c.add_argument(
        "--max-price-per-gpu-hour",
        type=float,
        metavar="USD",
        help="most a GPU worker may cost per GPU-hour, replacements included (default: any)",
    )
    c.add_argument(
        "--max-price-per-cpu-hour",
        type=float,
        metavar="USD",
        help="most a CPU-only node (the head, CPU workers) may cost per CPU-hour (default: any)",
    )
    c.add_argument(
        "--min-reliability",
        type=float,
        metavar="0-1",
        help="only machines at least this reliable (uptime x nodes ended well; offers show it)",
    )
    c.add_argument(
        "--verified-gpus-only",
        action="store_true",
        help="GPU workers only on machines whose GPUs a check lease verified (`dcluster offers` counts them)",
    )
    _wait_args(c, "show its events until it runs, then print its environment (`export` lines)")
    _json_arg(c)
    c.set_defaults(cluster_handler=cmd_create)

    ls = csub.add_parser("list", **_parser_kw("your clusters, as a table"))
    _json_arg(ls)
    ls.set_defaults(cluster_handler=cmd_list)

    for name, handler, text in (
        ("status", cmd_status, "one cluster: status, lifetime, nodes"),
        ("connect", cmd_connect, 'print `export` lines for the stock Ray CLI: eval "$(dcluster cluster connect ID)"'),
    ):
        q = csub.add_parser(name, **_parser_kw(text))
        q.add_argument("cluster_id", metavar="ID")
        _json_arg(q)
        q.set_defaults(cluster_handler=handler)

    db = csub.add_parser(
        "dashboard",
        **_parser_kw(
            "where its Ray dashboard and Prometheus metrics are, directly "
            "and through the platform; --forward: the dashboard on a local "
            "port"
        ),
    )
    db.add_argument("cluster_id", metavar="ID")
    db.add_argument(
        "--forward",
        type=int,
        metavar="PORT",
        nargs="?",
        const=0,
        help="serve the dashboard on 127.0.0.1:PORT through the platform, with your sign-in (no PORT: a free one)",
    )
    _json_arg(db)
    db.set_defaults(cluster_handler=cmd_dashboard)

    e = csub.add_parser("events", **_parser_kw("a cluster's events (--json --follow: one JSON object per line)"))
    e.add_argument("cluster_id", metavar="ID")
    e.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the cluster ends")
    _json_arg(e)
    e.set_defaults(cluster_handler=cmd_events)

    lg = csub.add_parser(
        "logs",
        **_parser_kw(
            "the logs its nodes shipped as they were released (also after the "
            "cluster ended): the list, a job's driver log, or one file"
        ),
    )
    lg.add_argument("cluster_id", metavar="ID")
    lg.add_argument("--job", metavar="JOB", help="a submitted job's driver output (the id `ray job submit` printed)")
    lg.add_argument("--file", metavar="NAME", help="one file of the list, e.g. ray/raylet.out")
    lg.add_argument("--node", metavar="NODE", help="with --file: the node (l-...) it came from")
    _json_arg(lg)
    lg.set_defaults(cluster_handler=cmd_logs)

    x = csub.add_parser("extend", **_parser_kw("add time to a cluster's lifetime"))
    x.add_argument("cluster_id", metavar="ID")
    x.add_argument("--duration", type=_duration_arg, required=True, help="time to add: 30m, 2h, 90s or seconds")
    _json_arg(x)
    x.set_defaults(cluster_handler=cmd_extend)

    d = csub.add_parser("delete", **_parser_kw("tear a cluster down (idempotent)"))
    d.add_argument("cluster_id", metavar="ID")
    _wait_args(d, "show its events until it has ended and its nodes are released")
    _json_arg(d)
    d.set_defaults(cluster_handler=cmd_delete)
    return p


def cmd_cluster(args: argparse.Namespace) -> int:
    return args.cluster_handler(args)
