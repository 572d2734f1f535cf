"""How the agent stops: a restart keeps its leases, leaving closes them.

- SIGTERM (`systemctl stop` or `restart`, an upgrade): the agent exits and its leases run on (their
  sandboxes do not depend on it); the next run reattaches them (lease_recovery.py) before its first
  heartbeat. It does not tell the platform it leaves: a restart heard again within the platform's
  silence window (heartbeat interval x missed beats) loses nothing.
- SIGINT (Ctrl-C) and SIGUSR1 (what `dcluster-agent leave` sends): close every lease, tell the platform
  the machine leaves, exit 0.

The running agent keeps agent.pid (its pid and start time, 0600) in its state dir, so that `leave` finds it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil

from dcl_core import protocol, secret_files
from worker import procs

LEAVE_SIGNAL = protocol.AGENT_LEAVE_SIGNAL
LEAVE_SIGNALS = (signal.SIGINT, LEAVE_SIGNAL)
RESTART_SIGNALS = (signal.SIGTERM,)
PID_FILE = "agent.pid"


def write_pid(state_dir: Path) -> None:
    me = psutil.Process()
    secret_files.write_secret_file(
        Path(state_dir) / PID_FILE, json.dumps({"pid": me.pid, "create_time": me.create_time()})
    )


def clear_pid(state_dir: Path) -> None:
    """Remove agent.pid if it is this process's."""
    if (agent := running_agent(state_dir)) is not None and agent.pid == os.getpid():
        (Path(state_dir) / PID_FILE).unlink(missing_ok=True)


def running_agent(state_dir: Path) -> psutil.Process | None:
    """The agent running on this state dir, if one does (its pid file names a live process started then)."""
    try:
        data = json.loads((Path(state_dir) / PID_FILE).read_text())
        pid, create_time = int(data["pid"]), float(data["create_time"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not procs.pid_alive(pid, create_time):
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def ask_to_leave(agent: psutil.Process, timeout_s: float) -> bool:
    """Send the agent the leave signal and wait for it to exit; False when it is still there after timeout_s."""
    try:
        agent.send_signal(LEAVE_SIGNAL)
    except psutil.NoSuchProcess:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not procs.is_live(agent):
            return True
        time.sleep(0.2)
    return False
