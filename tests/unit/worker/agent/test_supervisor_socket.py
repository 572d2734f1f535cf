"""supervisor.py's socket link, as the agent's own user without a sandbox: the supervisor answers each new
connection with its lease id, serves it, keeps its commands running when the agent's connection closes,
serves the next agent, and goes when no agent comes back.

Run here without `--pid-namespace own` (no sandbox around it): a stop must then signal nothing at all, since
kill(-1) on the host reaches every process of the user (as root, of the machine). Every process these tests
start is ended by its PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker import procs
from worker.agent.sandbox import control_socket, supervised

LEASE = "l-" + "5" * 12


@pytest.fixture
def lease_dir(tmp_path):
    path = tmp_path / "lease"
    path.mkdir(mode=0o700)
    return path


def _start(lease_dir: Path, orphan_s: float = 60.0) -> subprocess.Popen:
    with control_socket.listen(lease_dir) as listener:
        fd = listener.fileno()
        return subprocess.Popen(
            [sys.executable, "-I", "-S", str(supervised.SUPERVISOR), "--listen-fd", str(fd), "--lease-id", LEASE]
            + ["--agent-uid", str(os.getuid()), "--orphan-s", str(orphan_s)],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class _Link:
    def __init__(self, lease_dir: Path):
        self.sock = control_socket.connect(lease_dir)
        self.lines = self.sock.makefile("rb")
        self.ready = self.read()

    def read(self) -> dict:
        return json.loads(self.lines.readline())

    def ask(self, body: dict) -> dict:
        self.sock.sendall((json.dumps(body) + "\n").encode())
        while "event" in (reply := self.read()):  # an exit event of an earlier command may come first
            pass
        return reply

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def test_commands_outlive_the_agents_connection_and_the_next_agent_is_served(lease_dir, tmp_path):
    supervisor = _start(lease_dir)
    sleeper = 0
    try:
        sock = lease_dir / control_socket.SOCKET_NAME
        assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
        first = _Link(lease_dir)
        assert first.ready["event"] == "ready" and first.ready["lease_id"] == LEASE
        log = str(tmp_path / "sleep.log")
        spawned = first.ask({"id": 7, "op": "spawn", "argv": ["sleep", "300"], "env": {}, "cwd": "/", "log": log})
        assert spawned["id"] == 7
        sleeper = spawned["pid"]
        first.close()  # the agent goes (restart, kill -9): its connection closes
        time.sleep(0.3)
        assert procs.pid_alive(sleeper) and supervisor.poll() is None
        second = _Link(lease_dir)
        assert second.ready["lease_id"] == LEASE and second.ready["next_id"] == 8  # ids go on, none reused
        assert second.ask({"id": 8, "op": "write", "path": str(tmp_path / "f"), "content_b64": "aGk="})["ok"]
        assert (tmp_path / "f").read_text() == "hi"
        stopped = second.ask({"id": 9, "op": "stop", "grace_s": 1.0})
        assert stopped == {"id": 9, "ok": True, "signalled": 0}  # outside a namespace of its own: refused
        assert supervisor.wait(10) == 0 and procs.pid_alive(sleeper)
    finally:
        _end(supervisor, sleeper)


def _end(supervisor: subprocess.Popen, *pids: int) -> None:
    if supervisor.poll() is None:
        supervisor.kill()
        supervisor.wait(5)
    for pid in pids:
        if procs.pid_alive(pid):
            os.kill(pid, 9)


def test_with_no_agent_for_its_orphan_time_the_supervisor_goes(lease_dir, tmp_path):
    """(In a sandbox its stop then ends every process of the lease: tests/integration/test_lease_restarts.py.)"""
    supervisor = _start(lease_dir, orphan_s=1.0)
    sleeper = 0
    try:
        link = _Link(lease_dir)
        log = str(tmp_path / "sleep.log")
        sleeper = link.ask({"id": 1, "op": "spawn", "argv": ["sleep", "300"], "env": {}, "cwd": "/", "log": log})["pid"]
        link.close()
        assert supervisor.wait(30) == 0
    finally:
        _end(supervisor, sleeper)


def test_a_dir_open_to_others_gets_no_socket(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(PermissionError):
        control_socket.listen(loose)
