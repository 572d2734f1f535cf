"""A platform Ray node: its environment, its `ray start` command (head or joined member), and starting it."""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import psutil
import tenacity

from cli.platform import install, log_tail, state
from cli.platform.errors import PlatformError
from dcl_core import protocol, ray_ports, secret_files
from worker import procs

logger = logging.getLogger(__name__)

HEAD_NUM_CPUS = 2
RAY_START_TIMEOUT_S = 120.0
START_ATTEMPTS = 5
# Picks of a node's ports, when another process binds a picked one before `ray start` runs.
PORT_ATTEMPTS = 3
# What `ray start` prints when its raylet missed the fixed registration window (ray/_private/node.py).
RAY_SLOW_START = "timed out during startup"
STOP_GRACE_S = 5.0
# The executables (not a kill list: only to tell whether the recorded node is still up).
HEAD_CORE_PROCESSES = ("gcs_server", "raylet")
MEMBER_CORE_PROCESSES = ("raylet",)

# Variables of the caller's shell that would point the platform at another cluster or turn
# token auth on for it.
_ENV_DROP = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_NAMESPACE")

REDIS_URL = re.compile(r"^redis://(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>[0-9]{1,5})/?$")
# Where `ray start --head` writes the GCS address of the last head it started (under its temp dir).
RAY_ADDRESS_FILE = "ray_current_cluster"
# How long the processes of a joined node wait for a lost head's GCS to come back before they exit (Ray's default
# is 60 s: too short for an operator, or a busy machine, to restart a head).
GCS_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
MEMBER_GCS_RECONNECT_S = 600
# Ray's GCS keeps its tables in external Redis under this namespace: one per platform (so several share a Redis).
REDIS_NAMESPACE_ENV = "RAY_external_storage_namespace"

Started = TypeVar("Started")


# --- environment and commands -------------------------------------------------------------


def ray_env(base: Mapping[str, str], *, layout: state.Layout, ports: ray_ports.RayPorts) -> dict[str, str]:
    """The environment of every platform Ray process (DCLUSTER_OWNER is added by procs.spawn)."""
    env = {k: v for k, v in base.items() if k not in _ENV_DROP}
    env["HOME"] = str(layout.home)  # never the user's ~/.ray/auth_token
    # The platform cluster holds the database: only holders of its own token may join or submit.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(state.ensure_ray_auth_token(layout.ray_auth_token))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(ports.env())
    return env


def ray_head_command(*, ports: ray_ports.RayPorts, temp_dir: Path, num_cpus: int = HEAD_NUM_CPUS) -> list[str]:
    return [
        *install.venv_script("ray"),
        "start",
        "--head",
        "--disable-usage-stats",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        *ports.start_flags(head=True, temp_dir=temp_dir),
        "--num-cpus",
        str(num_cpus),
    ]


def ray_member_command(
    *, head_address: str, ports: ray_ports.RayPorts, temp_dir: Path, num_cpus: int = HEAD_NUM_CPUS
) -> list[str]:
    """`ray start` of a second (third, ...) platform node; its label draws the control-plane actors off the head."""
    return [
        *install.venv_script("ray"),
        "start",
        "--address",
        head_address,
        "--disable-usage-stats",
        *ports.start_flags(head=False, temp_dir=temp_dir),
        "--num-cpus",
        str(num_cpus),
        "--labels",
        f"{protocol.PLATFORM_MEMBER_LABEL}={protocol.PLATFORM_MEMBER_VALUE}",
    ]


def redis_address(url: str) -> str:
    """host:port of a redis:// URL (what RAY_REDIS_ADDRESS takes), or a PlatformError naming the form wanted."""
    match = REDIS_URL.match(url or "")
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise PlatformError(
            f"--redis takes redis://HOST:PORT (got {url!r}); give Redis's password, if any, in "
            "Ray's own settings rather than in the URL"
        )
    return f"{match['host']}:{match['port']}"


def redis_namespace(state_dir: Path) -> str:
    """The platform's namespace in Redis, the same on every restart of its head from this state dir."""
    return "dcluster-" + hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:12]


def gcs_fault_tolerance_env(base: Mapping[str, str], *, redis_url: str, state_dir: Path) -> dict[str, str]:
    """What the head's `ray start` needs so its GCS keeps its tables in Redis and a restarted head recovers them."""
    return {
        "RAY_REDIS_ADDRESS": redis_address(redis_url),
        REDIS_NAMESPACE_ENV: base.get(REDIS_NAMESPACE_ENV) or redis_namespace(state_dir),
    }


def secret_key_env(base: Mapping[str, str], layout: state.Layout) -> dict[str, str]:
    """The key that seals secrets in PostgreSQL, for every platform Ray process: the operator's (DCL_SECRET_KEY or
    DCL_SECRET_KEY_FILE), else a key file made once in the state dir (copy it to every other platform node)."""
    if base.get(secret_files.SECRET_KEY_ENV) or base.get(secret_files.SECRET_KEY_FILE_ENV):
        return {}
    if not layout.secret_key.exists():
        secret_files.write_secret_file(layout.secret_key, secret_files.new_secret_key() + "\n")
    return {secret_files.SECRET_KEY_FILE_ENV: str(layout.secret_key)}


# --- starting a node ------------------------------------------------------------------------


def proc_record(proc: psutil.Process) -> dict | None:
    """pid, start time (to tell a reused PID) and executable name of a live process."""
    try:
        with proc.oneshot():
            cmd = proc.cmdline()
            return {
                "pid": proc.pid,
                "create_time": proc.create_time(),
                "name": Path(cmd[0]).name if cmd else proc.name(),
            }
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def record_alive(record: dict) -> bool:
    """The process of a proc_record still runs (not another one that reuses its PID)."""
    return procs.pid_alive(record["pid"], record.get("create_time"))


class PortTaken(PlatformError):
    """A port picked for the node was bound by another process before `ray start` ran (another Ray cluster's
    worker may bind any port of its range at any moment)."""

    def __init__(self, port: int):
        super().__init__(f"port {port} was taken while starting; run `dcluster up` again")
        self.port = port


class _SlowStart(PlatformError):
    """`ray start` gave up waiting for its raylet to register: the machine is busy, not broken."""


def on_free_ports(
    ports: ray_ports.RayPorts,
    start: Callable[[ray_ports.RayPorts], Started],
    *,
    repick: Callable[[], ray_ports.RayPorts],
    kept_gcs: int | None,
) -> tuple[ray_ports.RayPorts, Started]:
    """start(ports), again on repicked ports when a picked port was bound by another process before `ray start`
    ran; a kept GCS port (a restarted head's) cannot be repicked, so its being taken ends the start."""
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return ports, start(ports)
        except PortTaken as taken:
            if taken.port == kept_gcs:
                raise
            logger.warning("port %d was taken before `ray start` ran; picking the node's ports again", taken.port)
            ports = repick()
    return ports, start(ports)


def start_node(
    *,
    layout: state.Layout,
    owner_tag: str,
    env: dict,
    command: Callable[[], list[str]],
    ports: ray_ports.RayPorts,
    core_processes: tuple[str, ...],
    role: str,
) -> list[dict]:
    """`ray start` (tagged owner_tag, output in the Ray log), again when the raylet only missed Ray's registration
    window; returns the proc_records of the core processes the node lives and dies with."""
    ray_log = layout.ray_log

    def attempt() -> None:
        for port in ports.listening():  # taken since allocation: a GCS port in use would join another cluster
            if not procs.port_is_free(port):
                raise PortTaken(port)
        cmd = command()
        logger.info("starting the Ray %s: %s", role, " ".join(cmd[1:4]))
        log_start = log_tail.size(ray_log)
        proc = procs.spawn(cmd, env=env, cwd=layout.state_dir, log_path=ray_log, owner_tag=owner_tag)
        try:
            rc = proc.wait(RAY_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise PlatformError(
                f"`ray start` did not finish in {RAY_START_TIMEOUT_S:.0f} s; see {ray_log}",
                details=log_tail.tail(ray_log),
            ) from None
        if rc != 0:
            # `ray start` gives the raylet a fixed 30 s to register with the GCS; a busy machine can miss that.
            slow = RAY_SLOW_START in log_tail.read_from(ray_log, log_start)
            raise (_SlowStart if slow else PlatformError)(
                f"`ray start` failed (exit {rc}); see {ray_log}", details=log_tail.tail(ray_log)
            )

    def stop_what_it_left(retry_state: tenacity.RetryCallState) -> None:
        logger.warning(
            "`ray start` timed out registering the raylet (attempt %d of %d): the machine is busy; retrying",
            retry_state.attempt_number,
            START_ATTEMPTS,
        )
        procs.stop_owned(owner_tag, grace_s=STOP_GRACE_S)

    # Slow is not broken: stop what the attempt left and start again; the last attempt's failure is raised as is.
    tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_SlowStart),
        stop=tenacity.stop_after_attempt(START_ATTEMPTS),
        before_sleep=stop_what_it_left,
        reraise=True,
    )(attempt)
    owned = [r for r in map(proc_record, procs.owned_processes(owner_tag)) if r]
    # Only the processes the node lives and dies with; workers come and go.
    core = [r for r in owned if r["name"] in core_processes]
    if {r["name"] for r in core} != set(core_processes):
        raise PlatformError(
            f"`ray start` returned but {'/'.join(core_processes)} are not running; see {ray_log}",
            details=log_tail.tail(ray_log),
        )
    logger.info("Ray %s up (%d processes)", role, len(owned))
    return core
