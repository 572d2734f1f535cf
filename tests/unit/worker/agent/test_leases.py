"""worker.agent.leases: lease dirs, env, commands, `ray stop` interception, files, close and recovery (no Ray)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

import worker
from dcl_core import protocol
from tests.waiting import wait_for
from worker import procs
from worker.agent import leases

TOKEN = "tok-" + "z" * 28
CLUSTER = "c-" + "a" * 12


def _lease_id() -> str:
    return "l-" + secrets.token_hex(6)


def _wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    return wait_for(predicate, timeout_s=timeout_s, interval_s=interval_s)


def _alive(pid: int) -> bool:
    return procs.pid_alive(pid)


def _open(runner: leases.LeaseRunner, role: str = "head", **kw) -> str:
    lease_id = kw.pop("lease_id", None) or _lease_id()
    runner.open(protocol.LeaseOpen(lease_id=lease_id, cluster_id=CLUSTER, role=role, ray_auth_token=TOKEN, **kw))
    return lease_id


@pytest.fixture
def base_env():
    return {
        **os.environ,
        "RAY_ADDRESS": "10.0.0.1:6379",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "agent-secret",
        "RAY_AUTH_TOKEN_PATH": "/agent/token",
        "RAY_NAMESPACE": "dcluster",
        "PYTHONPATH": "/elsewhere",
        "DCLUSTER_AGENT_PASSWORD": "provider-secret",
        "HOME": "/root",
        "LANG": "C.UTF-8",
    }


@pytest.fixture
def runner(tmp_path, base_env):
    runner = leases.LeaseRunner(
        tmp_path / "state" / "leases", node_ip="127.0.0.1", base_env=base_env, machine_id_fn=lambda: "m-7"
    )
    yield runner
    runner.close_all(grace_s=0.5)  # whatever a failing test left: stopped by tag, dirs removed


@pytest.fixture
def outsider(tmp_path):
    """A sleeper that belongs to no lease; it must survive every close. Killed by PID at the end."""
    proc = procs.spawn(
        ["sleep", "300"],
        env=dict(os.environ),
        log_path=tmp_path / "outsider.log",
        owner_tag="test-leases-outsider-" + secrets.token_hex(4),
    )
    yield proc
    proc.kill()
    proc.wait(5)


def _read_pid(path: Path) -> int:
    return int(_wait_for(lambda: path.exists() and path.read_text().strip() or None))


# --- open ----------------------------------------------------------------------------------


def test_open_prepares_private_dirs_token_and_record(runner):
    lease_id = _lease_id()
    payload = protocol.LeaseOpen(
        lease_id=lease_id,
        cluster_id=CLUSTER,
        role="head",
        gpu_indices=[0, 2],
        resources={"provider_m-7": 1},
        labels={"dcluster.io/cluster": CLUSTER},
        ray_auth_token=TOKEN,
    )
    opened = runner.open(payload)
    assert opened.node_ip == "127.0.0.1" and set(opened.ports) >= {"gcs", "dashboard", "min_worker"}
    lease_dir = runner.root / lease_id
    for path, mode in (
        (runner.root, 0o700),
        (lease_dir, 0o700),
        (lease_dir / "home", 0o700),
        (lease_dir / "ray_auth_token", 0o600),
        (lease_dir / "lease.json", 0o600),
        (Path("/tmp/dcl-" + lease_id), 0o700),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert (lease_dir / "ray_auth_token").read_text() == TOKEN
    record = json.loads((lease_dir / "lease.json").read_text())
    assert record["ports"] == opened.ports and record["owner_tag"] == "dcl-lease-" + lease_id
    assert record["machine_id"] == "m-7" and record["temp_dir"] == "/tmp/dcl-" + lease_id
    assert TOKEN not in (lease_dir / "lease.json").read_text()
    assert runner.open(payload) == opened  # idempotent: the same ports again
    assert runner.lease_ids() == [lease_id]
    with pytest.raises(leases.LeaseConflict):
        runner.open(payload.model_copy(update={"role": "worker"}))


def test_leases_get_disjoint_ports(runner):
    a, b = _open(runner), _open(runner)
    ports_a = runner.ports_of(a).all_ports()
    assert not ports_a & runner.ports_of(b).all_ports()


# --- environment ---------------------------------------------------------------------------


def test_head_environment(runner):
    lease_id = _open(runner, gpu_indices=[1, 3])
    lease_dir = runner.root / lease_id
    ports = runner.ports_of(lease_id)
    assert runner.uid_of(lease_id) is None  # unsandboxed: the agent's own user
    env = runner.environment(lease_id, {"RAY_HEAD_IP": "127.0.0.1"})
    assert env["HOME"] == str(lease_dir / "home")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    # Only the agent's own PYTHONPATH, nothing of a checkout: the agent's interpreter imports the package as installed.
    assert env["PYTHONPATH"] == "/elsewhere"
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(lease_dir / "ray_auth_token")
    assert "RAY_AUTH_TOKEN" not in env and "RAY_ADDRESS" not in env and "RAY_NAMESPACE" not in env
    assert env["RAY_HEAD_IP"] == "127.0.0.1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    # Only a few harmless variables of the agent's pass: never its password, its Ray settings or its HOME.
    assert "DCLUSTER_AGENT_PASSWORD" not in env and env["LANG"] == "C.UTF-8"
    flags = env["DCL_RAY_PORT_FLAGS"]
    assert f"--temp-dir /tmp/dcl-{lease_id} " in flags and f"--port {ports.gcs} " in flags
    assert f"--node-manager-port {ports.node_manager}" in flags
    assert flags.endswith(" --node-ip-address 127.0.0.1")  # the address the agent reports, not Ray's own guess
    assert env["AUTOSCALER_METRIC_PORT"] == str(ports.autoscaler_metric)
    assert env["DASHBOARD_METRIC_PORT"] == str(ports.dashboard_metric)
    assert env["DCL_LEASE_ID"] == lease_id and "DCL_HEAD_GCS_PORT" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert json.loads(env["RAY_OVERRIDE_RESOURCES"]) == {}
    assert json.loads(env["RAY_OVERRIDE_LABELS"]) == {protocol.LEASE_LABEL: lease_id}  # the platform maps nodes by it


def test_worker_environment_has_no_gcs_port_flag_and_no_gpu(runner):
    lease_id = _open(runner, role="worker", head_gcs_port=6380)
    env = runner.environment(lease_id, {})
    assert "--port " not in env["DCL_RAY_PORT_FLAGS"] and "--dashboard-port" not in env["DCL_RAY_PORT_FLAGS"]
    assert f"--temp-dir /tmp/dcl-{lease_id}" in env["DCL_RAY_PORT_FLAGS"]
    assert env["DCL_HEAD_GCS_PORT"] == "6380"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU lease sees no GPU


def test_override_resources_and_labels_merge_with_the_lease_winning(runner):
    lease_id = _open(runner, resources={"provider_m-7": 1, "GPU": 2}, labels={"dcluster.io/gpu": "RTX 4090"})
    env = runner.environment(
        lease_id,
        {
            "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 4, "GPU": 8}),
            "RAY_OVERRIDE_LABELS": json.dumps({"dcluster.io/gpu": "H100", "team": "a"}),
        },
    )
    assert json.loads(env["RAY_OVERRIDE_RESOURCES"]) == {"CPU": 4, "GPU": 2, "provider_m-7": 1}
    assert json.loads(env["RAY_OVERRIDE_LABELS"]) == {
        "dcluster.io/gpu": "RTX 4090",
        "team": "a",
        protocol.LEASE_LABEL: lease_id,
    }
    # A command cannot pass its node off as another lease's.
    env = runner.environment(lease_id, {"RAY_OVERRIDE_LABELS": json.dumps({protocol.LEASE_LABEL: "l-000000000000"})})
    assert json.loads(env["RAY_OVERRIDE_LABELS"])[protocol.LEASE_LABEL] == lease_id
    env = runner.environment(lease_id, {})  # set even when the command sent none
    assert json.loads(env["RAY_OVERRIDE_RESOURCES"]) == {"provider_m-7": 1, "GPU": 2}
    with pytest.raises(leases.LeaseError, match="JSON object"):
        runner.environment(lease_id, {"RAY_OVERRIDE_LABELS": "[1]"})
    with pytest.raises(leases.LeaseError, match="not JSON"):
        runner.environment(lease_id, {"RAY_OVERRIDE_RESOURCES": "CPU=1"})


def test_unknown_lease_is_an_error(runner):
    with pytest.raises(leases.UnknownLease, match="open it again"):
        runner.run(_lease_id(), "true", {}, 5)


# --- run -----------------------------------------------------------------------------------


def test_run_captures_exit_code_and_output_in_the_lease_home(runner):
    lease_id = _open(runner)
    home = runner.root / lease_id / "home"
    result = runner.run(
        lease_id,
        "mkdir -p ~/x; cd ~/x; pwd; echo oops >&2; echo $FOO; echo $DCLUSTER_OWNER; exit 3",
        {"FOO": "bar"},
        10,
    )
    assert (result.ok, result.exit_code) == (False, 3)
    assert result.output.splitlines() == [str(home / "x"), "oops", "bar", "dcl-lease-" + lease_id]
    ok = runner.run(lease_id, "pwd", {}, 10)
    assert ok.ok and ok.exit_code == 0 and ok.output.strip() == str(home)


def test_a_lease_imports_the_node_provider_from_the_installed_package(runner, base_env):
    """The sub-cluster head's autoscaler imports worker.node_provider in the lease's `ray start` environment:
    the agent's interpreter finds it as installed (site-packages, or an editable install's finder), with
    no PYTHONPATH of ours and from the lease's home, not a checkout."""
    lease_id = _open(runner)
    probe = "import worker.node_provider.market_provider as m, sys; print(m.__file__); print(sys.executable)"
    result = runner.run(lease_id, f"env -u PYTHONPATH python -c {shlex.quote(probe)}", {}, 60)
    assert result.ok, result.output
    module_file, executable = result.output.split()
    expected = Path(worker.__file__).resolve().parent / "node_provider" / "market_provider.py"
    assert Path(module_file).resolve() == expected and executable == str(Path(sys.executable).parent / "python")


def test_output_keeps_the_last_64_kib(runner):
    lease_id = _open(runner)
    result = runner.run(lease_id, "head -c 200000 /dev/zero | tr '\\0' a; printf '\\377END'", {}, 10)
    assert result.ok and len(result.output) == protocol.MAX_OUTPUT_BYTES
    assert result.output.endswith("\ufffdEND")  # undecodable bytes are replaced, not fatal


def test_timeout_kills_the_commands_process_group(runner):
    lease_id = _open(runner)
    home = runner.root / lease_id / "home"
    started = time.monotonic()
    result = runner.run(lease_id, "echo $$ > ~/pgid; sleep 60 & sleep 60; echo never", {}, 1.0)
    assert (result.ok, result.exit_code) == (False, 124) and "timed out after 1 s" in result.output
    assert time.monotonic() - started < 5
    pgid = int((home / "pgid").read_text())

    def group_gone():
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    return False
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return True

    assert _wait_for(group_gone, 5)


def test_background_daemon_returns_promptly_is_tagged_and_close_stops_only_it(runner, outsider):
    lease_id = _open(runner)
    home = runner.root / lease_id / "home"
    started = time.monotonic()
    # A plain background child and one in a session of its own (like Ray's `ray::` workers).
    result = runner.run(lease_id, "sleep 300 & echo $! > ~/sleeper; setsid sleep 300 & echo started", {}, 30)
    assert result.ok and "started" in result.output
    assert time.monotonic() - started < 2  # the daemon holds the log file, not a pipe we wait on
    sleeper = _read_pid(home / "sleeper")
    # /proc/<pid>/environ reads empty while the child is between fork and exec: wait for the exec.
    assert _wait_for(lambda: psutil.Process(sleeper).environ().get(procs.OWNER_ENV)) == "dcl-lease-" + lease_id
    assert _wait_for(lambda: len(procs.owned_processes("dcl-lease-" + lease_id)) == 2)
    closed = runner.close(lease_id)
    assert closed.ok and closed.data["stopped"] == 2 and closed.data["remaining"] == []
    assert not _alive(sleeper) and not procs.owned_processes("dcl-lease-" + lease_id)
    assert _alive(outsider.pid)
    assert not (runner.root / lease_id).exists() and not Path("/tmp/dcl-" + lease_id).exists()
    assert runner.lease_ids() == []


def test_ray_stop_is_intercepted_and_stops_only_this_lease(runner, outsider, tmp_path):
    # A fake `ray` first on the command's PATH would leave a marker if `ray stop` ever ran.
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    marker = tmp_path / "ray-ran"
    (fake_bin / "ray").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (fake_bin / "ray").chmod(0o755)
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    lease_id, other = _open(runner), _open(runner)
    runner.run(lease_id, "sleep 300 & echo $! > ~/sleeper", {}, 10)
    runner.run(other, "sleep 300 & echo $! > ~/sleeper", {}, 10)
    mine = _read_pid(runner.root / lease_id / "home" / "sleeper")
    theirs = _read_pid(runner.root / other / "home" / "sleeper")

    result = runner.run(lease_id, "export A=1; ray stop --force", {"PATH": path}, 10)
    assert (result.ok, result.exit_code) == (True, 0)
    assert "`ray stop` intercepted: stopped 1 process(es)" in result.output
    assert result.data["ray_stop"]["stopped"] == 1
    assert not marker.exists()
    assert not _alive(mine) and _alive(theirs) and _alive(outsider.pid)
    assert runner.lease_ids() == sorted([lease_id, other])  # the lease stays open: Ray may start again

    # What follows `ray stop` in the same command still runs (the launcher may write `ray stop; ray start`).
    again = runner.run(lease_id, "ray stop; echo restarted", {"PATH": path}, 10)
    assert again.ok and "restarted" in again.output and not marker.exists()


# --- put_file ------------------------------------------------------------------------------


def test_put_file_is_private_and_expands_the_lease_home(runner):
    lease_id = _open(runner)
    lease_dir = runner.root / lease_id
    home = lease_dir / "home"
    result = runner.put_file(lease_id, "~/ray_bootstrap_config.yaml", b"auth: secret\n")
    assert result.ok and result.data["path"] == str(home / "ray_bootstrap_config.yaml")
    target = home / "ray_bootstrap_config.yaml"
    assert target.read_bytes() == b"auth: secret\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert runner.put_file(lease_id, "nested/dir/f.txt", b"1").ok
    assert (home / "nested" / "dir" / "f.txt").read_bytes() == b"1"
    assert runner.put_file(lease_id, str(lease_dir / "home" / "abs.txt"), b"2").ok
    assert runner.put_file(lease_id, "~/ray_bootstrap_config.yaml", b"v2").ok  # overwrite
    assert target.read_bytes() == b"v2" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert runner.run(lease_id, "cat ~/nested/dir/f.txt", {}, 10).output == "1"


def test_put_file_rejects_escapes(runner, tmp_path):
    lease_id = _open(runner)
    home = runner.root / lease_id / "home"
    (home / "link").symlink_to(tmp_path)
    for path in (
        "../../../escape",
        "/etc/dcl-escape",
        "~root/x",
        "~/../../x",
        "link/x",
        "",
        "~",
        "../lease.json",
        "../ray_auth_token",
    ):
        result = runner.put_file(lease_id, path, b"x")
        assert not result.ok and result.exit_code is None, path
    assert not (tmp_path / "x").exists() and not Path("/etc/dcl-escape").exists()
    assert (runner.root / lease_id / "ray_auth_token").read_text() == TOKEN


# --- close, shutdown, recovery -------------------------------------------------------------


def test_close_is_idempotent_and_unknown_leases_are_fine(runner):
    lease_id = _open(runner)
    first = runner.close(lease_id)
    assert first.ok and "elapsed_s" in first.data
    assert runner.close(lease_id).ok
    assert runner.close(_lease_id()).ok
    with pytest.raises(leases.LeaseError):
        runner.close("../etc")


def test_close_all_refuses_new_work(runner):
    lease_id = _open(runner)
    runner.run(lease_id, "sleep 300 & echo $! > ~/sleeper", {}, 10)
    sleeper = _read_pid(runner.root / lease_id / "home" / "sleeper")
    results = runner.close_all()
    assert results[lease_id].ok and not _alive(sleeper) and runner.lease_ids() == []
    with pytest.raises(leases.RunnerClosed):
        _open(runner)


def test_run_never_logs_the_token(runner, caplog):
    caplog.set_level("DEBUG")
    lease_id = _open(runner)
    runner.run(lease_id, f"export RAY_AUTH_TOKEN={TOKEN}; true", {"RAY_AUTH_TOKEN": TOKEN}, 10)
    runner.put_file(lease_id, "~/cfg", TOKEN.encode())
    assert TOKEN not in caplog.text


def test_spawned_processes_are_ours_to_reap(runner):
    """A finished command leaves no zombie of ours behind (Popen.wait reaps it)."""
    lease_id = _open(runner)
    runner.run(lease_id, "true", {}, 10)
    me = psutil.Process()
    assert not [c for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]


# --- the node IP on a fresh agent ------------------------------------------------------------

_FRESH_AGENT_OPENS = """
import json, sys, threading
from worker.agent import leases
from dcl_core import protocol
runner = leases.LeaseRunner(sys.argv[1], base_env={})  # no node_ip: the first opens import Ray for it
barrier, errors = threading.Barrier(4), []
def open_one(i):
    barrier.wait()
    try:
        runner.open(protocol.LeaseOpen(lease_id="l-%012x" % i, cluster_id="c-" + "a" * 12, role="worker",
                                       ray_auth_token="tok-" + "z" * 28))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=open_one, args=(i,)) for i in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"errors": errors, "leases": runner.lease_ids()}))
runner.close_all(grace_s=0.1)
"""


def test_parallel_opens_on_a_fresh_agent_all_succeed(tmp_path):
    """The first opens run in parallel threads and each needs the node IP (a lazy Ray import):
    a half-initialised module must never fail them. A fresh interpreter per try: the race is in
    the first import; without the fix it shows in nearly every run."""
    import subprocess

    for attempt in range(3):
        out = subprocess.run(
            [sys.executable, "-c", _FRESH_AGENT_OPENS, str(tmp_path / f"leases-{attempt}")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(worker.__file__).resolve().parents[1])},
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["errors"] == [] and len(result["leases"]) == 4, result
