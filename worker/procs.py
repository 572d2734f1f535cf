"""Owning and stopping process trees by an environment tag, and picking free ports.

Ray puts gcs_server, raylet, the dashboard and every `ray::` worker in process groups of
their own, and workers can outlive the raylet for seconds, so "kill my process group" is not
enough and "kill everything called raylet" would stop other people's clusters. Instead every
process we start carries ``DCLUSTER_OWNER=<tag>`` in its environment, which all its
descendants inherit; stopping means finding exactly the processes with that tag (plus the
descendants of PIDs we know) and terminating them. Nothing here ever matches by name.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

from dcl_core import ray_ports

logger = logging.getLogger(__name__)

OWNER_ENV = "DCLUSTER_OWNER"

# Ray Serve's direct ingress listens from 30000 up; keep worker port ranges away from it.
# --- owning -----------------------------------------------------------------------------


def spawn(
    cmd: list[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike | None = None,
    log_path: Path,
    owner_tag: str,
) -> subprocess.Popen:
    """Start `cmd` in a new session, tagged with DCLUSTER_OWNER=owner_tag, output appended to log_path."""
    if not owner_tag:
        raise ValueError("owner_tag must be a non-empty string")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**env, OWNER_ENV: owner_tag}
    with open(log_path, "ab", buffering=0) as log:
        # The child keeps its own copy of the descriptor; ours is closed on leaving the block.
        proc = subprocess.Popen(
            list(cmd),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    logger.debug("spawned pid %d tag %s: %s", proc.pid, owner_tag, cmd[0])
    return proc


def _has_tag(proc: psutil.Process, owner_tag: str) -> bool:
    try:
        return proc.environ().get(OWNER_ENV) == owner_tag
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return False


def owned_processes(owner_tag: str, roots: Iterable[int] = ()) -> list[psutil.Process]:
    """Every live process tagged with owner_tag, plus the given roots and all their descendants.

    The calling process is never included, even if it carries the tag itself.
    """
    if not owner_tag:
        raise ValueError("owner_tag must be a non-empty string")
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        if proc.pid != me and _has_tag(proc, owner_tag):
            found[proc.pid] = proc
    for pid in roots:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        for proc in family:
            if proc.pid != me and is_live(proc):
                found.setdefault(proc.pid, proc)
    return sorted(found.values(), key=lambda p: p.pid)


def is_live(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds no ports or files any more)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


# --- stopping ---------------------------------------------------------------------------


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> list[psutil.Process]:
    signalled = []
    for proc in procs:
        try:
            proc.send_signal(sig)
            signalled.append(proc)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        except psutil.AccessDenied:
            logger.warning("no permission to signal pid %d", proc.pid)
    return signalled


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those still alive after timeout_s.

    A zombie counts as gone: it holds no ports or files any more, and when its parent is
    not us, reaping it is up to that parent or init (which on some machines takes seconds).
    """
    deadline = time.monotonic() + timeout_s
    alive = procs
    while True:
        _, alive = psutil.wait_procs(alive, timeout=0.05)  # reaps the ones that are our children
        alive = [p for p in alive if is_live(p)]
        if not alive or time.monotonic() >= deadline:
            return alive


def terminate(procs: Iterable[psutil.Process], *, grace_s: float = 5.0) -> list[int]:
    """SIGTERM all, wait up to grace_s, SIGKILL the survivors; return the PIDs that needed SIGKILL."""
    procs = list(procs)
    if not procs:
        return []
    signalled = _signal_all(procs, signal.SIGTERM)
    alive = wait_gone(signalled, grace_s)
    if not alive:
        return []
    killed = [p.pid for p in _signal_all(alive, signal.SIGKILL)]
    still = wait_gone(alive, 5.0)
    for proc in still:
        logger.warning("pid %d survived SIGKILL (uninterruptible sleep?)", proc.pid)
    return killed


@dataclasses.dataclass
class StopSummary:
    owner_tag: str
    terminated: list[int]  # every PID signalled, in the order found
    killed: list[int]  # the ones that needed SIGKILL
    remaining: list[int]  # still alive when settle_s ran out (should be empty)
    rounds: int
    elapsed_s: float

    @property
    def clean(self) -> bool:
        return not self.remaining


# Shutdown order of a Ray node, as `ray stop` does it: the raylet first (its workers and agents
# fate-share with it and exit cleanly), then everything else, the GCS last. Terminated all at
# once, gcs_server, raylet and the autoscaler monitor ignore SIGTERM for over 15 s; in this
# order every process exits on SIGTERM within ~2 s per stage. The executable name only orders
# processes that are already known to be ours; it never selects one.
# The lease sandboxes' supervisor (standard library only) gets these names with each stop request.
STOP_FIRST = frozenset({"raylet"})
STOP_LAST = frozenset({"gcs_server"})


def _stages(found: list[psutil.Process]) -> list[list[psutil.Process]]:
    def name(proc: psutil.Process) -> str:
        try:
            return proc.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return ""

    first = [p for p in found if name(p) in STOP_FIRST]
    last = [p for p in found if name(p) in STOP_LAST]
    middle = [p for p in found if p not in first and p not in last]
    return [stage for stage in (first, middle, last) if stage]


def stop_owned(
    owner_tag: str,
    roots: Iterable[int] = (),
    grace_s: float = 5.0,
    settle_s: float = 10.0,
) -> StopSummary:
    """Terminate everything owned by owner_tag until nothing is left or settle_s has passed.

    Each sweep stops the processes in Ray's order (raylet, others, GCS), each stage with its
    own SIGTERM grace. Loops because a raylet being torn down can start a worker after a sweep.
    """
    roots = list(roots)
    start = time.monotonic()
    terminated: list[int] = []
    killed: list[int] = []
    rounds = 0
    remaining: list[psutil.Process] = []
    while True:
        procs = owned_processes(owner_tag, roots)
        if not procs:
            remaining = []
            break
        if rounds and time.monotonic() - start > settle_s:
            remaining = procs
            break
        rounds += 1
        terminated.extend(p.pid for p in procs if p.pid not in terminated)
        for stage in _stages(procs):
            t_stage = time.monotonic()
            killed.extend(terminate(stage, grace_s=grace_s))
            logger.debug("%s: stage of %d stopped in %.1f s", owner_tag, len(stage), time.monotonic() - t_stage)
        roots = []  # descendants found now carry the tag or are already gone
        time.sleep(0.2)
    summary = StopSummary(
        owner_tag=owner_tag,
        terminated=terminated,
        killed=killed,
        remaining=[p.pid for p in remaining],
        rounds=rounds,
        elapsed_s=round(time.monotonic() - start, 2),
    )
    if summary.remaining:
        logger.warning("%s: still alive after %.0f s: %s", owner_tag, settle_s, summary.remaining)
    else:
        logger.debug(
            "%s: stopped %d processes (%d killed) in %.1f s", owner_tag, len(terminated), len(killed), summary.elapsed_s
        )
    return summary


def pid_alive(pid: int, create_time: float | None = None) -> bool:
    """True when pid is a live, non-zombie process (and, if given, started at create_time)."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.5:
            return False  # the PID was reused
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


# --- ports ------------------------------------------------------------------------------


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on port, on host or on the wildcard address.

    SO_REUSEADDR makes a port whose old connections sit in TIME_WAIT count as free (servers
    set it too), while a listening socket still makes the bind fail.
    """
    for addr in {host, "0.0.0.0"}:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((addr, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue
                raise
    return True


def listen_window() -> tuple[int, int]:
    """Where servers of ours listen: below the kernel's ephemeral range (an outgoing connection may
    take a port of that range as its own local port, even connect to itself when nothing listens
    there, and a server restarting on that port then cannot bind it), and below 30000, which
    Serve's direct ingress uses by default."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return 10000, min(ephemeral_low, 30000) - 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, in the listen window."""
    return free_ports(1, host=host)[0]


def free_ports(
    n: int, exclude: Iterable[int] = (), host: str = "127.0.0.1", *, rng: random.Random | None = None
) -> list[int]:
    """n distinct ports free right now, in the listen window, none of them in exclude."""
    rng = rng or random.Random()
    lo, hi = listen_window()
    excluded = set(exclude)
    ports: list[int] = []
    for _ in range(n * 50 + 50):
        port = rng.randint(lo, hi)
        if port not in excluded and port not in ports and port_is_free(port, host):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"could not find {n} free ports in {lo}-{hi}")


def free_port_range(
    size: int,
    exclude: Iterable[int] = (),
    host: str = "127.0.0.1",
    *,
    rng: random.Random | None = None,
    attempts: int = 200,
) -> int:
    """First port of `size` consecutive free ports (none in exclude), from a random start.

    Searches the listen window (see listen_window()).
    """
    if size < 1:
        raise ValueError("size must be >= 1")
    rng = rng or random.Random()
    excluded = set(exclude)
    windows = [(lo, hi) for lo, hi in (listen_window(),) if hi - lo >= size]
    if not windows:
        raise ValueError(f"no window holds {size} consecutive ports")
    weights = [hi - lo for lo, hi in windows]
    for _ in range(attempts):
        lo, hi = rng.choices(windows, weights=weights)[0]
        start = rng.randint(lo, hi - size)
        for port in range(start, start + size):
            if port in excluded or not port_is_free(port, host):
                break
        else:
            return start
    raise RuntimeError(f"could not find {size} consecutive free ports")


def allocate_ray_ports(
    *, exclude: tuple[int, ...] = (), worker_range: int = ray_ports.WORKER_PORT_RANGE
) -> ray_ports.RayPorts:
    """Every port of one Ray node (the layout is dcl_core.ray_ports), each free right now and none in exclude."""
    single = free_ports(len(ray_ports.RayPorts.single_port_names()), exclude=exclude)
    start = free_port_range(worker_range, exclude=(*exclude, *single))
    return ray_ports.RayPorts.from_ports(single, start, worker_range)
