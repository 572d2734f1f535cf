"""worker.procs: tagged process trees are found and stopped, untagged ones never touched; ports."""

from __future__ import annotations

import os
import random
import secrets
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.waiting import wait_for
from worker import procs

# A bash that starts one grandchild in a session of its own (like Ray's workers, which sit in
# their own process groups) and one direct child, then waits.
TREE_SCRIPT = "setsid sleep 60 & sleep 60 & wait"


def _tag() -> str:
    return "test-procs-" + secrets.token_hex(4)


def _wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    return wait_for(predicate, timeout_s=timeout_s, interval_s=interval_s)


@pytest.fixture
def reaper():
    """Kills, by PID, whatever a test started and left alive."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def tagged_tree(tmp_path, reaper):
    tag = _tag()
    root = procs.spawn(["bash", "-c", TREE_SCRIPT], env=dict(os.environ), log_path=tmp_path / "tree.log", owner_tag=tag)
    reaper.append(root)
    # bash, the setsid'd sleep and the direct sleep.
    _wait_for(lambda: len(procs.owned_processes(tag)) >= 3)
    yield tag, root
    procs.stop_owned(tag, grace_s=1, settle_s=5)


def test_spawn_sets_tag_session_and_log(tmp_path, reaper):
    tag = _tag()
    log = tmp_path / "logs" / "out.log"
    log.parent.mkdir()
    log.write_text("before\n")
    proc = procs.spawn(
        [
            sys.executable,
            "-c",
            "import os,sys; print(os.environ['DCLUSTER_OWNER'], flush=True); "
            "print('err', file=sys.stderr, flush=True); print(os.getsid(0) == os.getpid())",
        ],
        env={"PATH": os.environ["PATH"]},
        log_path=log,
        owner_tag=tag,
    )
    reaper.append(proc)
    assert proc.wait(10) == 0
    assert log.read_text().splitlines() == ["before", tag, "err", "True"]


def test_owned_processes_finds_whole_tree(tagged_tree):
    tag, root = tagged_tree
    owned = procs.owned_processes(tag)
    pids = {p.pid for p in owned}
    assert root.pid in pids
    assert len(pids) == 3
    sessions = {os.getsid(pid) for pid in pids}
    assert len(sessions) == 2  # the setsid'd sleep escaped the root's session
    assert os.getpid() not in pids


def test_stop_owned_leaves_nothing_and_spares_untagged(tagged_tree, reaper):
    tag, root = tagged_tree
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    reaper.append(bystander)
    other_tag = procs.spawn(["sleep", "60"], env=dict(os.environ), log_path=os.devnull, owner_tag=tag + "-other")
    reaper.append(other_tag)

    summary = procs.stop_owned(tag, grace_s=2, settle_s=5)

    assert summary.clean
    assert len(summary.terminated) == 3
    assert procs.owned_processes(tag) == []
    _wait_for(lambda: root.poll() is not None)
    assert bystander.poll() is None, "an untagged process was touched"
    assert other_tag.poll() is None, "a process with a different tag was touched"
    # Ours to clean up, by PID.
    for proc in (bystander, other_tag):
        proc.kill()
        proc.wait(5)


def test_roots_bring_untagged_descendants(tmp_path, reaper):
    # Started without a tag: only the root PID ties the tree to us.
    root = subprocess.Popen(["bash", "-c", TREE_SCRIPT], start_new_session=True)
    reaper.append(root)
    tag = _tag()
    _wait_for(lambda: len(psutil.Process(root.pid).children(recursive=True)) >= 2)
    found = {p.pid for p in procs.owned_processes(tag, roots=[root.pid])}
    assert root.pid in found and len(found) >= 2  # the setsid'd one may be reparented already
    summary = procs.stop_owned(tag, roots=[root.pid], grace_s=2, settle_s=5)
    assert summary.clean
    _wait_for(lambda: root.poll() is not None)


def test_terminate_kills_what_ignores_sigterm(tmp_path, reaper):
    tag = _tag()
    ready = tmp_path / "ready"
    stubborn = procs.spawn(
        ["bash", "-c", f"trap '' TERM; touch {ready}; while true; do sleep 0.1; done"],
        env=dict(os.environ),
        log_path=tmp_path / "stubborn.log",
        owner_tag=tag,
    )
    reaper.append(stubborn)
    _wait_for(ready.exists)
    t0 = time.monotonic()
    summary = procs.stop_owned(tag, grace_s=0.5, settle_s=5)
    assert summary.clean
    assert stubborn.pid in summary.killed
    assert time.monotonic() - t0 < 5
    assert not procs.pid_alive(stubborn.pid)


def test_stop_owned_with_nothing_is_quick():
    summary = procs.stop_owned(_tag(), settle_s=5)
    assert summary.clean and summary.terminated == [] and summary.rounds == 0


def test_owned_processes_rejects_empty_tag():
    with pytest.raises(ValueError):
        procs.owned_processes("")


def test_pid_alive_checks_create_time(reaper):
    proc = subprocess.Popen(["sleep", "60"])
    reaper.append(proc)
    created = psutil.Process(proc.pid).create_time()
    assert procs.pid_alive(proc.pid, created)
    assert not procs.pid_alive(proc.pid, created - 100)
    proc.kill()
    proc.wait(5)
    assert not procs.pid_alive(proc.pid)


# --- ports ------------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_free_ports_distinct_and_bindable():
    ports = procs.free_ports(12)
    assert len(set(ports)) == 12
    assert all(_bindable(p) for p in ports)
    assert procs.free_port() > 0


def test_free_ports_exclude():
    first = procs.free_ports(5)
    again = procs.free_ports(5, exclude=first)
    assert not set(first) & set(again)


def test_port_is_free_sees_listeners():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not procs.port_is_free(port)
    with socket.socket() as sock:  # a wildcard listener blocks the loopback address too
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not procs.port_is_free(port, "127.0.0.1")
    assert procs.port_is_free(port)


def test_free_port_range_avoids_serve_ephemeral_ports_and_listeners():
    rng = random.Random(7)
    lo, hi = procs.listen_window()
    assert hi < 30000 and hi < int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(20):
        start = procs.free_port_range(200, rng=rng)
        end = start + 199
        assert lo <= start and end <= hi
    assert all(lo <= p <= hi for p in procs.free_ports(20))
    # A listener inside the range the generator would pick first pushes the result elsewhere.
    start = procs.free_port_range(50, rng=random.Random(11))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", start + 10))
        sock.listen()
        other = procs.free_port_range(50, rng=random.Random(11))
        assert not other <= start + 10 < other + 50
    excluded = procs.free_port_range(50, exclude=range(start, start + 50), rng=random.Random(11))
    assert not set(range(excluded, excluded + 50)) & set(range(start, start + 50))
