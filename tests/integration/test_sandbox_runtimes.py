"""Each sandbox runtime this machine has, on real leases (no Ray): what a lease can reach, and what survives it.

bwrap always (CI installs it; the agent must be root to give each lease its own uid and cgroup);
docker where `docker info` answers. Every attempt must be seen to fail with the denial named
(ENOENT, EACCES, EROFS, EPERM, or a SIGKILL by the OOM killer), not merely "no exception".
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.integration import sandboxes
from worker import procs
from worker.agent import leases
from worker.agent.sandbox import bwrap
from worker.agent.sandbox import docker as sandbox_docker

pytestmark = sandboxes.NEEDS_ROOT_AND_BWRAP
RUNTIMES, DENIED = sandboxes.RUNTIMES, sandboxes.DENIED
agent_dir = sandboxes.agent_dir

# Runs inside a lease: tries each thing it is given and prints {name: "ok" | errno name} as JSON.
PROBE = textwrap.dedent("""
    import errno, json, os, sys
    reads, writes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "ok"
        except OSError as exc:
            out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    for name, path in reads.items():
        attempt(name, lambda p=path: open(p, "rb").read())
    for name, path in writes.items():
        attempt(name, lambda p=path: open(p, "wb").write(b"x"))
    out["env"] = sorted(os.environ)
    print(json.dumps(out))
""")


def _probe(runner, lease_id, reads: dict, writes: dict) -> dict:
    script = runner.root / lease_id / "home" / "probe.py"
    runner.put_file(lease_id, "~/probe.py", PROBE.encode())
    result = runner.run(
        lease_id, f"{sys.executable} {script} '{json.dumps(reads)}' '{json.dumps(writes)}'", timeout_s=60
    )
    assert result.ok, result.output
    return json.loads(result.output.strip().splitlines()[-1])


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_a_lease_reaches_nothing_of_the_agent_or_other_leases(agent_dir, runtime_name):
    runner = sandboxes.make_runner(agent_dir, runtime_name)
    try:
        mine, other = sandboxes.open_lease(runner), sandboxes.open_lease(runner)
        runner.put_file(other, "~/ray_bootstrap_config.yaml", b"provider: {credential: secret}")
        other_dir = runner.root / other
        agent_pid = os.getpid()
        got = _probe(
            runner,
            mine,
            reads={
                "own_token": str(runner.root / mine / "ray_auth_token"),
                "provider_password_file": str(agent_dir / "password"),
                "agent_state": str(agent_dir / "agent" / "machine.json"),
                "agent_environ": f"/proc/{agent_pid}/environ",
                "other_lease_token": str(other_dir / "ray_auth_token"),
                "other_lease_bootstrap_config": str(other_dir / "home" / "ray_bootstrap_config.yaml"),
                "other_lease_record": str(other_dir / "lease.json"),
                "own_lease_record": str(runner.root / mine / "lease.json"),
                "shadow": "/etc/shadow",
            },
            writes={
                "write_root": "/escape",
                "write_usr": "/usr/escape",
                "write_etc_passwd": "/etc/passwd",
                "write_agent_dir": str(agent_dir / "escape"),
                "write_other_home": str(other_dir / "home" / "escape"),
                "write_python": str(Path(sys.executable).parent / "escape"),
            },
        )
        assert got.pop("own_token") == "ok"  # the probe ran, and could read what is its own
        env = got.pop("env")
        assert "DCLUSTER_AGENT_PASSWORD" not in env and "RAY_AUTH_TOKEN" not in env
        assert all(value in DENIED for value in got.values()), got
        assert not (agent_dir / "escape").exists() and not Path("/escape").exists()
    finally:
        runner.close_all(grace_s=0.5)


def _host_processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_closing_a_lease_ends_every_process_however_forked(agent_dir, runtime_name):
    runner = sandboxes.make_runner(agent_dir, runtime_name)
    marker = f"{4000 + secrets.randbelow(999)}.{secrets.randbelow(999)}"
    outsider = procs.spawn(
        ["sleep", "300"], env=dict(os.environ), log_path=agent_dir / "outsider.log", owner_tag="dcl-test-outsider"
    )
    try:
        mine, other = sandboxes.open_lease(runner), sandboxes.open_lease(runner)
        runner.run(other, "nohup sleep 300 >/dev/null 2>&1 &", timeout_s=30)
        result = runner.run(
            mine,
            f"env -u DCLUSTER_OWNER setsid nohup sleep {marker} >/dev/null 2>&1 < /dev/null & "
            f"(bash -c 'setsid sleep {marker} &' &) ; sleep 0.5",
            timeout_s=30,
        )
        assert result.ok, result.output
        assert len(_host_processes_with(f"sleep {marker}")) == 2  # they run, detached from the command
        # ray stop and kill -1 inside reach only that lease (a third one: kill -1 ends the lease itself):
        # the outsider and the other lease live on.
        killer = sandboxes.open_lease(runner)
        runner.run(killer, "ray --logging-level=info stop --force >/dev/null 2>&1; kill -9 -1; true", timeout_s=60)
        assert psutil.Process(outsider.pid).is_running()
        assert runner.run(other, "pgrep -c sleep", timeout_s=30).output.strip() == "1"
        assert len(_host_processes_with(f"sleep {marker}")) == 2
        assert runner.close(killer).ok
        closed = runner.close(mine)
        assert closed.ok, closed.output
        assert _host_processes_with(f"sleep {marker}") == []
        assert not (runner.root / mine).exists() and not leases.temp_dir_for(mine).exists()
        if runtime_name == "bwrap":
            assert not Path(f"/sys/fs/cgroup/pids/dcluster/{mine}").exists()
        else:
            assert sandbox_docker.remove_containers(mine) == []
        assert runner.run(other, "pgrep -c sleep", timeout_s=30).output.strip() == "1"
    finally:
        runner.close_all(grace_s=0.5)
        outsider.kill()
        outsider.wait(5)


# Two processes spin for SPIN_S each and print the CPU seconds they used together.
SPIN = textwrap.dedent("""
    import os, sys, time
    spin_s = float(sys.argv[1])
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + spin_s
            while time.monotonic() < end:
                pass
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    t = os.times()
    print(f"cpu={t.children_user + t.children_system:.2f}")
""")
SPIN_S = 2.0


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_once_ray_is_up_a_lease_gets_no_more_than_its_cpus(agent_dir, runtime_name):
    """The lease (1 CPU) runs two spinning processes after its `ray start` returned: together they get at most
    one core's worth of CPU time (the quota), however idle the machine's other core is."""
    runner = sandboxes.make_runner(agent_dir, runtime_name)
    try:
        lease = sandboxes.open_lease(runner)
        assert runner.run(lease, ": ray start", timeout_s=30).ok  # the launcher's start command, as the agent sees it
        assert runner.cpu_caps.is_capped(lease)
        runner.put_file(lease, "~/spin.py", SPIN.encode())
        script = runner.root / lease / "home" / "spin.py"
        result = runner.run(lease, f"{sys.executable} {script} {SPIN_S}", timeout_s=60)
        assert result.ok, result.output
        used = float(result.output.strip().splitlines()[-1].removeprefix("cpu="))
        assert used <= SPIN_S * 1.0 * 1.15 + 0.2, f"{used:.2f} CPU s in {SPIN_S} s: not capped at 1 CPU"
    finally:
        runner.close_all(grace_s=0.5)


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_going_past_the_memory_limit_is_killed(agent_dir, runtime_name):
    runner = sandboxes.make_runner(agent_dir, runtime_name, memory_mb=256)
    try:
        lease = sandboxes.open_lease(runner)
        grow = "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('NOT', 'LIMITED')"
        result = runner.run(lease, f'{sys.executable} -c "{grow}"; echo exit=$?', timeout_s=60)
        assert "NOT LIMITED" not in result.output
        assert "exit=137" in result.output, result.output  # SIGKILL from the OOM killer
        assert runner.run(lease, "echo alive", timeout_s=30).output.strip().endswith("alive")  # the lease lives on
    finally:
        runner.close_all(grace_s=0.5)


def test_only_the_leased_gpus_device_nodes_are_there(agent_dir):
    dev = agent_dir / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (dev / name).write_text(name)  # fake nodes: what matters is which ones are bound in
    runner = sandboxes.make_runner(agent_dir, "bwrap", gpu_dev_root=dev)
    try:
        lease = sandboxes.open_lease(runner, gpus=[2])
        result = runner.run(
            lease,
            "export CUDA_VISIBLE_DEVICES=0,1,2,3; echo cvd=$CUDA_VISIBLE_DEVICES; "
            "ls /dev | grep nvidia; cat /dev/nvidia2",
            timeout_s=30,
        )
        lines = result.output.split()
        assert (
            sorted(x for x in lines if x.startswith("nvidia") and x != "nvidia2") == ["nvidia-uvm", "nvidiactl"]
            and lines.count("nvidia2") == 2
        )  # listed, and its content read
        assert runner.environment(lease)["CUDA_VISIBLE_DEVICES"] == "0"  # renumbered: only one GPU exists inside
        for other in ("nvidia0", "nvidia1", "nvidia3"):
            assert runner.run(lease, f"cat /dev/{other}", timeout_s=30).exit_code == 1
    finally:
        runner.close_all(grace_s=0.5)


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_a_lease_runs_as_a_user_of_its_own_without_capabilities(agent_dir, runtime_name):
    runner = sandboxes.make_runner(agent_dir, runtime_name)
    try:
        lease = sandboxes.open_lease(runner)
        out = runner.run(
            lease,
            "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ps -e --no-headers | wc -l",
            timeout_s=30,
        ).output.split()
        uid = int(out[0])
        assert uid != os.getuid() and uid == runner.uid_of(lease)
        assert out[out.index("CapEff:") + 1] == "0000000000000000" and out[out.index("NoNewPrivs:") + 1] == "1"
        assert int(out[-1]) < 10  # its own pid namespace: a handful of processes, not the machine's
        started = time.monotonic()
        assert runner.close(lease).ok and time.monotonic() - started < 10
    finally:
        runner.close_all(grace_s=0.5)


KERNEL_PROBE = Path(__file__).resolve().parents[1] / "kernel_probe.py"


def _sysctl(path: str, default: int) -> int:
    try:
        return int(Path("/proc/sys", path).read_text())
    except (OSError, ValueError):
        return default


def _host_lets_users_make_user_namespaces() -> bool:
    return (
        _sysctl("user/max_user_namespaces", 1) > 0
        and _sysctl("kernel/unprivileged_userns_clone", 1) == 1
        and _sysctl("kernel/apparmor_restrict_unprivileged_userns", 0) == 0
    )


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_kernel_calls_a_lease_must_not_make_fail_inside_and_work_outside(agent_dir, runtime_name):
    """User namespaces, keys, mounts, ptrace of a process outside, bpf, userfaultfd: each refused in the lease, by
    its seccomp filter (`Seccomp: 2`). The control: the same probe outside the lease, as the lease's own uid without
    capabilities, against the same target, succeeds wherever this host lets a user do it."""
    runner = sandboxes.make_runner(agent_dir, runtime_name)
    witness = None
    try:
        lease = sandboxes.open_lease(runner)
        uid = runner.uid_of(lease)
        as_lease_user = bwrap.drop_privileges(uid, uid)
        # Outside every lease, the lease's own uid: only the sandbox stands between the lease and this process.
        witness = subprocess.Popen([*as_lease_user, "sleep", "300"])
        outside = agent_dir / "outside"
        (outside / "mnt").mkdir(parents=True)
        shutil.copy(KERNEL_PROBE, outside / "kernel_probe.py")
        os.chown(outside / "mnt", uid, uid)
        outside.chmod(0o755)
        targets = {"ptrace_pid": witness.pid, "mount_dir": str(outside / "mnt")}
        done = subprocess.run(
            # The system's Python: the lease's uid may not reach this venv outside the lease.
            [*as_lease_user, "/usr/bin/python3", str(outside / "kernel_probe.py"), json.dumps(targets)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        control = json.loads(done.stdout.strip().splitlines()[-1])

        runner.put_file(lease, "~/kernel_probe.py", KERNEL_PROBE.read_bytes())
        home = runner.root / lease / "home"
        targets["mount_dir"] = str(home / "mnt")
        result = runner.run(
            lease,
            f"mkdir -p {home}/mnt && {sys.executable} {home}/kernel_probe.py '{json.dumps(targets)}'",
            timeout_s=60,
        )
        assert result.ok, result.output
        got = json.loads(result.output.strip().splitlines()[-1])
    finally:
        runner.close_all(grace_s=0.5)
        if witness is not None:
            witness.kill()
            witness.wait(5)

    assert got["seccomp"] == "2", got  # SECCOMP_MODE_FILTER
    refused = ("unshare_user", "unshare_user_command", "keyctl", "add_key", "bpf", "userfaultfd")
    for attempt in (*refused, "mount_tmpfs", "mount_syscall", "mount_in_user_namespace"):
        assert got[attempt] == "EPERM", (attempt, got)
    assert got["thread_and_fork"] == "ok"
    if runtime_name == "bwrap":  # our filter refuses ptrace itself
        assert got["ptrace_outside"] == got["ptrace_own_child"] == "EPERM", got
    else:  # Docker's default profile allows ptrace (kernel >= 4.8): the target is not in the container's pid namespace
        assert got["ptrace_outside"] in ("EPERM", "ESRCH"), got

    # The control, outside: the same calls reach the kernel and work, where this host lets a user do them.
    assert control["seccomp"] == "0" and control["keyctl"] == control["add_key"] == "ok", control
    if _host_lets_users_make_user_namespaces():
        assert control["unshare_user"] == control["unshare_user_command"] == "ok", control
        assert control["mount_in_user_namespace"] == "ok", control
    # The host itself forbids a user without capabilities to mount outside a user namespace of its own: no control.
    assert control["mount_tmpfs"] == control["mount_syscall"] == "EPERM"
    if _sysctl("kernel/yama/ptrace_scope", 0) == 0:
        assert control["ptrace_outside"] == "ok", control
    assert control["ptrace_own_child"] == "ok", control
