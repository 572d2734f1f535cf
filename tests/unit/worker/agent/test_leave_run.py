"""`dcluster-agent leave`: the running agent found by its pid file and sent the leave signal; with none running,
the leases a previous run left on the state dir closed here (runtime none: real processes, by their tag)."""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
from pathlib import Path

import psutil

from dcl_core import protocol
from worker import procs
from worker.agent import leases, leave_run, stopping


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(
        **{"runtime": "none", "gpu_device_dir": Path("/dev"), "docker_image": None, "leave_timeout": 30.0, **kw}
    )


def test_with_no_agent_running_leave_closes_the_leases_left_there(tmp_path, capsys):
    state = tmp_path / "agent"
    runner = leases.LeaseRunner(state / "leases", node_ip="127.0.0.1")
    lease_id = "l-" + secrets.token_hex(6)
    runner.open(
        protocol.LeaseOpen(
            lease_id=lease_id, cluster_id="c-" + "d" * 12, role="worker", ray_auth_token="tok-" + "q" * 28
        )
    )
    assert runner.run(lease_id, "setsid sleep 300 & echo $! > ~/pid", {}, 10).ok
    sleeper = int((state / "leases" / lease_id / "home" / "pid").read_text())
    (state / stopping.PID_FILE).write_text(json.dumps({"pid": 999_999_999, "create_time": 1.0}))  # long gone
    assert stopping.running_agent(state) is None
    assert leave_run.run(_args(), state) == 0
    assert not procs.pid_alive(sleeper) and not (state / "leases" / lease_id).exists()
    assert "closed 1 lease(s)" in capsys.readouterr().out


# Stands in for a running agent: leaves (exit 0) on the leave signal only.
_AGENT = (
    "import signal, sys, time; signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0)); "
    "print('up', flush=True); time.sleep(60)"
)


def test_a_running_agent_is_sent_the_leave_signal_and_waited_for(tmp_path):
    state = tmp_path / "agent"
    state.mkdir()
    agent = subprocess.Popen([sys.executable, "-c", _AGENT], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "up"
        me = psutil.Process(agent.pid)
        (state / stopping.PID_FILE).write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
        assert stopping.running_agent(state).pid == agent.pid
        assert leave_run.run(_args(), state) == 0
        assert agent.wait(10) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
