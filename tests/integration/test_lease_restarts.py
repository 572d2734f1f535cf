"""Real bwrap sandboxes that outlive the agent: a restarted runner reattaches them over the supervisor's unix
socket, a sandbox that died is cleaned up, and nobody but the agent's user talks to a supervisor."""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import sys
import textwrap
from pathlib import Path

import psutil

from tests.integration import sandboxes
from tests.waiting import wait_for
from worker.agent import leases

pytestmark = sandboxes.NEEDS_ROOT_AND_BWRAP
NOBODY = 65534
agent_dir = sandboxes.agent_dir


def _marker_processes(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if f"sleep {marker}" in " ".join(p.info["cmdline"] or ())]


def _start_marker(runner: leases.LeaseRunner, lease_id: str) -> psutil.Process:
    marker = f"{5000 + secrets.randbelow(999)}.{secrets.randbelow(999)}"
    assert runner.run(lease_id, f"setsid nohup sleep {marker} >/dev/null 2>&1 < /dev/null &", timeout_s=30).ok
    [found] = wait_for(lambda: _marker_processes(marker), timeout_s=10, what="the marker process")
    return found


def _record(runner: leases.LeaseRunner, lease_id: str) -> dict:
    return json.loads((runner.root / lease_id / "lease.json").read_text())


def _cgroup(lease_id: str) -> Path:
    return Path(f"/sys/fs/cgroup/pids/dcluster/{lease_id}")


def test_a_restarted_runner_reattaches_the_running_sandbox(agent_dir):
    previous = sandboxes.make_runner(agent_dir, "bwrap")
    current = None
    try:
        lease_id = sandboxes.open_lease(previous)
        marker = _start_marker(previous, lease_id)
        uid = previous.uid_of(lease_id)
        sock = previous.root / lease_id / "supervisor.sock"
        assert sock.is_socket() and (sock.stat().st_mode & 0o777, sock.stat().st_uid) == (0o600, os.geteuid())
        assert (sock.parent.stat().st_mode & 0o777) == 0o700
        # The agent goes (for a restart): `previous` is never closed. The next run, on the same state dir:
        current = sandboxes.make_runner(agent_dir, "bwrap")
        found = current.recover()
        assert (found.kept, found.dropped) == ([lease_id], [])
        assert marker.is_running() and current.uid_of(lease_id) == uid
        if _cgroup(lease_id).exists():  # the limits stay with the lease
            assert marker.pid in [int(p) for p in (_cgroup(lease_id) / "cgroup.procs").read_text().split()]
        again = current.run(lease_id, "id -u; pgrep -c sleep", timeout_s=30)
        assert again.ok and again.output.split() == [str(uid), "1"], again.output
        closed = current.close(lease_id)
        assert closed.ok, closed.output
        assert not marker.is_running() and not (current.root / lease_id).exists() and not _cgroup(lease_id).exists()
    finally:
        for runner in (current, previous):
            if runner is not None:
                runner.close_all(grace_s=0.5)


def test_a_sandbox_that_died_is_cleaned_up_at_the_next_start(agent_dir):
    previous = sandboxes.make_runner(agent_dir, "bwrap")
    current = None
    try:
        kept, dead = sandboxes.open_lease(previous), sandboxes.open_lease(previous)
        kept_marker, dead_marker = _start_marker(previous, kept), _start_marker(previous, dead)
        keeper = _record(previous, dead)["sandbox"]["keeper_pid"]
        os.killpg(keeper, signal.SIGKILL)  # the sandbox dies while no agent runs: its whole tree goes
        wait_for(lambda: not dead_marker.is_running(), timeout_s=15, what="the dead sandbox's processes gone")
        current = sandboxes.make_runner(agent_dir, "bwrap")
        found = current.recover()
        assert (found.kept, found.dropped) == ([kept], [dead])
        assert kept_marker.is_running() and current.lease_ids() == [kept]
        assert not (current.root / dead).exists() and not _cgroup(dead).exists()
    finally:
        for runner in (current, previous):
            if runner is not None:
                runner.close_all(grace_s=0.5)


# Run as another user: connect to the supervisor's socket and report what happened.
_ATTACK = textwrap.dedent("""
    import json, os, socket, sys
    os.setgroups([]); os.setgid(NOBODY); os.setuid(NOBODY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(PATH)
    except OSError as exc:
        os.write(1, json.dumps({"connect": exc.errno}).encode()); sys.exit(0)
    try:
        s.sendall(b'{"id": 1, "op": "spawn", "argv": ["true"], "env": {}, "cwd": "/", "log": "/tmp/x"}\\n')
        answer = s.recv(4096)
    except OSError:  # closed before the request got through (EPIPE, ECONNRESET): no answer either
        answer = b""
    os.write(1, json.dumps({"connect": 0, "answer": answer.decode(errors="replace")}).encode())
""")


def _attack_as_nobody(path: Path) -> dict:
    code = _ATTACK.replace("NOBODY", str(NOBODY)).replace("PATH", repr(str(path)))
    pid_r, pid_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody: a plain local user of the machine
        os.close(pid_r)
        os.dup2(pid_w, 1)
        try:
            exec(code, {})
        finally:
            os._exit(0)
    os.close(pid_w)
    with os.fdopen(pid_r) as out:
        text = out.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def test_only_the_agents_user_talks_to_a_supervisor(agent_dir):
    """Another local user cannot reach the socket (its dir is the agent's, 0700); with the dir and the socket
    opened to all, the supervisor still closes the connection unanswered (SO_PEERCRED). The lease's own
    tenant does not see the socket, nor the supervisor's descriptors."""
    runner = sandboxes.make_runner(agent_dir, "bwrap")
    try:
        lease_id = sandboxes.open_lease(runner)
        lease_dir = runner.root / lease_id
        sock = lease_dir / "supervisor.sock"
        assert _attack_as_nobody(sock) == {"connect": errno.EACCES}
        os.chmod(agent_dir, 0o711)
        for path in (agent_dir / "agent", runner.root, lease_dir):
            os.chmod(path, 0o711)
        os.chmod(sock, 0o666)
        try:
            assert _attack_as_nobody(sock) == {"connect": 0, "answer": ""}  # closed unanswered, nothing spawned
        finally:
            for path in (lease_dir, runner.root, agent_dir / "agent", agent_dir):
                os.chmod(path, 0o700)
            os.chmod(sock, 0o600)

        supervisor = runner.run(lease_id, "pgrep -f supervisor.py", timeout_s=30).output.split()[0]
        probe = textwrap.dedent(f"""
            import json, os, socket
            seen = {{}}
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect({str(sock)!r}); seen["connect"] = "connected"
            except OSError as exc:
                seen["connect"] = exc.errno
            try:
                seen["fds"] = os.listdir("/proc/{supervisor}/fd")
            except OSError as exc:
                seen["fds"] = exc.errno
            seen["socket_listed"] = "supervisor.sock" in os.listdir({str(lease_dir)!r})  # only its mounts are there
            print(json.dumps(seen))
        """)
        tenant = runner.run(lease_id, f"{sys.executable} -c {_quote(probe)}", timeout_s=30)
        seen = json.loads(tenant.output.strip().splitlines()[-1])
        assert seen == {"connect": errno.ENOENT, "fds": errno.EACCES, "socket_listed": False}, seen
        assert runner.run(lease_id, "echo still served", timeout_s=30).output.strip() == "still served"
    finally:
        runner.close_all(grace_s=0.5)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
