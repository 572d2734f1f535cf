"""`dcluster demo`: the whole product on one machine: platform, two providers, a cluster, a Ray job, teardown."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import dcluster
from cli import cluster_watch, exits, output, session
from cli.platform import accounts, install, state
from cli.platform import errors as platform_errors

DEMO_PROVIDERS = 2
DEMO_AGENT_CPUS = 4
DEMO_DURATION_S = 1800
RUNNING_TIMEOUT_S = 300.0
JOB_TIMEOUT_S = 600.0
ENDED_TIMEOUT_S = 180.0
EXAMPLES_DIR = Path(__file__).with_name("examples")  # package data; the checkout's examples/ links to it
JOB_SCRIPT = "train.py"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAN_ON = re.compile(r"\bran on machine (m-[0-9a-f]+)\b")


@dataclasses.dataclass
class Timings:
    """The demo's steps and how long each took (None: skipped; a string: e.g. 'reused')."""

    steps: list[tuple[str, float | str | None]] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def add(self, name: str, value: float | str | None) -> None:
        self.steps.append((name, value))

    def table(self) -> str:
        rows = [(name, "-" if v is None else v if isinstance(v, str) else f"{v:.1f} s") for name, v in self.steps]
        rows.append(("total", f"{time.monotonic() - self.started:.1f} s"))
        return output.table(("step", "time"), rows)


def job_env(base: Mapping[str, str], connection_env: Mapping[str, str], home: str) -> dict[str, str]:
    """The caller's environment without any RAY_* (no other cluster, no other token), a private HOME
    (no ~/.ray/auth_token of the user's), and the cluster's connection variables."""
    env = {k: v for k, v in base.items() if not k.startswith("RAY_")}
    env["HOME"] = home
    env.update(connection_env)
    return env


def job_command(dashboard_url: str, working_dir: Path = EXAMPLES_DIR) -> list[str]:
    return [
        *install.venv_script("ray"),
        "job",
        "submit",
        "--address",
        dashboard_url,
        "--working-dir",
        str(working_dir),
        "--",
        "python",
        JOB_SCRIPT,
    ]


def machines_in(lines: list[str]) -> list[str]:
    """The machines the job's tasks ran on: its `... ran on machine m-...` and `MACHINES m-... m-...` lines."""
    found: set[str] = set()
    for line in lines:
        if line.startswith("MACHINES "):
            found.update(line.split()[1:])
        found.update(_RAN_ON.findall(line))
    return sorted(found)


def run_streaming(
    cmd: list[str], env: Mapping[str, str], timeout_s: float, prefix: str = "  | "
) -> tuple[int, list[str]]:
    """Runs cmd in its own process group, echoing its output as it comes; past timeout_s (or on
    Ctrl-C) that group is stopped. Returns (exit code, output lines)."""
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        _stop_group(proc)

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = _ANSI.sub("", line.rstrip("\n"))  # Ray colours its output even into a pipe
            lines.append(line)
            print(prefix + line, flush=True)
        rc = proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    finally:
        timer.cancel()
    if timed_out.is_set():
        lines.append(f"(stopped after {timeout_s:.0f} s)")
        return 124, lines
    return rc, lines


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the group this module started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _say(text: str) -> None:
    print(text, flush=True)


class _EventPrinter:
    """Prints a cluster's events with the seconds since `start` (reset for each step)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, event: dict) -> None:
        _say(f"  +{time.monotonic() - self.start:6.1f}s  {event['kind']:<14} {event['message']}")


def _buyer_client(url: str, state_dir: Path) -> dcluster.Client:
    store = accounts.CredentialStore(state.Layout(state_dir).credentials_json)
    password = store.password(accounts.BUYER_USERNAME)
    if not password:
        raise platform_errors.PlatformError(
            f"no password for {accounts.BUYER_USERNAME} in {store.path}; use a fresh --state-dir"
        )
    record = state.Layout(state_dir).load() or {}
    client = session.new_client(url, state.local_trust(record) if record else None)
    client.login(accounts.BUYER_USERNAME, password)  # keeps the password: renews the token on a 401
    return client


def add_demo(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="show all of it on this machine: platform, 2 providers, a cluster, a Ray job, teardown",
        description="Starts the platform with 2 local provider agents (or reuses the one running in --state-dir), "
        "creates a cluster as local-buyer, runs examples/train.py on it with `ray job submit`, "
        "deletes the cluster and prints how long each step took. The platform keeps running. "
        "Exit 0 only if the job succeeded on at least 2 machines (1 with --workers 1).",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="platform state directory (default: $DCLUSTER_STATE_DIR or ~/.dcluster)",
    )
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the API when it starts (default 8000)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes of the demo cluster (default 2)")
    p.add_argument("--keep", action="store_true", help="leave the cluster running and print its environment")
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    install.require_platform("demo")
    from cli.platform import launcher as platform_launcher  # here: it needs the [platform] extra

    state_dir = Path(args.state_dir or state.default_state_dir()).expanduser().absolute()
    timings = Timings()

    _say(f"==> platform ({state_dir})")
    launcher = platform_launcher.PlatformLauncher(
        state_dir, port=args.port, providers=DEMO_PROVIDERS, agent_cpus=DEMO_AGENT_CPUS
    )
    t = time.monotonic()
    up = launcher.up()
    timings.add("platform up", "reused" if up.already_running else time.monotonic() - t)
    _say("\n".join(up.lines()))

    client = _buyer_client(up.api_url, state_dir)
    try:
        ok = _run_cluster(client, args, timings)
    finally:
        client.close()

    _say("\n==> timings")
    _say(timings.table())
    _say(
        f"\nthe platform keeps running ({up.api_url}); stop it with: "
        f"dcluster down --state-dir {shlex.quote(str(state_dir))}"
    )
    return 0 if ok else 1


def _run_cluster(client: dcluster.Client, args: argparse.Namespace, timings: Timings) -> bool:
    _say(f"\n==> cluster: {args.workers} worker(s), signed in as {accounts.BUYER_USERNAME}")
    t = time.monotonic()
    try:
        cluster = client.create_cluster(num_workers=args.workers, duration_s=DEMO_DURATION_S, name="demo")
    except dcluster.ApiError as exc:
        _say(f"the platform refused the cluster: {output.detail_text(exc.detail)}")
        return False
    cid = cluster["id"]
    _say(f"POST /v1/clusters -> {cid} {cluster['status']}")
    printer = _EventPrinter()
    watcher = cluster_watch.ClusterWatcher(client, cid, printer)
    delete = not args.keep
    try:
        try:
            watcher.wait_running(RUNNING_TIMEOUT_S)
        except exits.CliError as exc:
            _say(f"the cluster did not run: {exc.message}")
            return False
        timings.add("POST -> running", time.monotonic() - t)
        connection = client.cluster_connection(cid)

        _say(
            f"\n==> ray job submit --address {connection['dashboard_url']} "
            f"--working-dir {EXAMPLES_DIR} -- python {JOB_SCRIPT}"
        )
        t = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="dcl-demo-home-") as home:
            rc, lines = run_streaming(
                job_command(connection["dashboard_url"]), job_env(os.environ, connection["env"], home), JOB_TIMEOUT_S
            )
        timings.add("job submit -> done", time.monotonic() - t)
        machines = machines_in(lines)
        wanted = min(2, args.workers)
        ok = rc == 0 and len(machines) >= wanted
        _say(
            f"job exit code {rc}; tasks ran on {len(machines)} machine(s): {' '.join(machines) or '-'}"
            + ("" if ok else f"  (FAILED: wanted exit 0 and >= {wanted} machines)")
        )

        if args.keep:
            _say(
                f"\n==> cluster {cid} keeps running (expires in {output.human_duration(DEMO_DURATION_S)}); "
                f"its environment:"
            )
            _say("\n".join(output.export_lines(connection["env"])))
            _say(
                f"# delete it: dcluster login --url {client.base_url} --username {accounts.BUYER_USERNAME} "
                f"(password in credentials.json) && dcluster cluster delete {cid} --wait"
            )
            timings.add("DELETE -> terminated", "kept")
        return ok
    finally:
        if delete:
            printer.start = time.monotonic()
            _delete(client, watcher, timings)


def _delete(client: dcluster.Client, watcher: cluster_watch.ClusterWatcher, timings: Timings) -> None:
    _say(f"\n==> DELETE /v1/clusters/{watcher.cluster_id}")
    t = time.monotonic()
    try:
        client.delete_cluster(watcher.cluster_id)
        final = watcher.wait_ended(ENDED_TIMEOUT_S)
    except (exits.CliError, dcluster.ClientError) as exc:
        _say(f"could not confirm the teardown: {exits.error_message(exc)}")
        timings.add("DELETE -> terminated", None)
        return
    timings.add(f"DELETE -> {final['status']}", time.monotonic() - t)
