"""The sandbox's pure parts: GPU device mapping against fake device nodes, bwrap's command line, limits, flags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dcl_core import domain
from worker.agent import cli as agent_cli
from worker.agent import sandbox
from worker.agent.sandbox import base, bwrap, cgroups, gpu_devices, unsandboxed


def _fake_machine(tmp_path: Path, gpus: int, *, minors: list[int] | None = None, shared=("nvidiactl", "nvidia-uvm")):
    dev, proc = tmp_path / "dev", tmp_path / "proc"
    dev.mkdir()
    for name in shared:
        (dev / name).touch()
    minors = list(range(gpus)) if minors is None else minors
    for minor in minors:
        (dev / f"nvidia{minor}").touch()
    (dev / "null").touch()
    return dev, proc


def _driver_proc(proc: Path, bus_to_minor: dict[str, int]) -> None:
    for bus, minor in bus_to_minor.items():
        entry = proc / "driver" / "nvidia" / "gpus" / bus
        entry.mkdir(parents=True)
        (entry / "information").write_text(f"Model: \t\t NVIDIA H100\nIRQ:   42\nDevice Minor: \t {minor}\n")


def test_leased_gpus_get_their_nodes_and_the_shared_ones_only(tmp_path):
    dev, proc = _fake_machine(tmp_path, 4)
    got = gpu_devices.devices_for([1, 3], dev_root=dev, proc_root=proc)
    assert [p.name for p in got.nodes] == ["nvidia1", "nvidia3", "nvidiactl", "nvidia-uvm"]
    assert [p.name for p in got.all_gpu_nodes] == ["nvidia0", "nvidia1", "nvidia2", "nvidia3"]
    assert gpu_devices.devices_for([], dev_root=dev, proc_root=proc).nodes == ()  # a CPU lease: no GPU node at all


def test_gpu_index_maps_to_its_minor_by_bus_order(tmp_path):
    dev, proc = _fake_machine(tmp_path, 0, minors=[0, 1, 2])
    # NVML index = position by bus id; the minors need not follow it.
    _driver_proc(proc, {"0000:c1:00.0": 0, "0000:41:00.0": 2, "0000:81:00.0": 1})
    got = gpu_devices.devices_for([0], dev_root=dev, proc_root=proc)
    assert got.nodes[0].name == "nvidia2"
    assert [e.name for e in got.proc_entries] == ["0000:41:00.0"]
    with pytest.raises(gpu_devices.GpuDeviceError, match="not on this machine"):
        gpu_devices.devices_for([3], dev_root=dev, proc_root=proc)


def test_a_leased_gpu_without_a_node_is_an_error(tmp_path):
    dev, proc = _fake_machine(tmp_path, 1)
    with pytest.raises(gpu_devices.GpuDeviceError, match="no device node"):
        gpu_devices.devices_for([1], dev_root=dev, proc_root=proc)


def _spec(tmp_path: Path, **kw) -> base.SandboxSpec:
    lease = tmp_path / "leases" / "l-0123456789ab"
    return base.SandboxSpec(
        lease_id="l-0123456789ab",
        owner_tag="dcl-lease-l-0123456789ab",
        uid=1_200_000_007,
        gid=1_200_000_007,
        writable=(lease / "home", lease / "logs", Path("/tmp/dcl-l-0123456789ab")),
        readonly=(lease / "ray_auth_token",),
        **kw,
    )


def _pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def test_bwrap_view_is_explicit(tmp_path):
    dev, proc = _fake_machine(tmp_path, 4)
    devices = gpu_devices.devices_for([2], dev_root=dev, proc_root=proc)
    spec = _spec(tmp_path, gpu_indices=(2,))
    args = bwrap.bwrap_args(
        spec,
        runtime_dirs=[Path("/opt/venv"), Path("/root/.pyenv/versions/3.11")],
        devices=devices,
        hostname="box",
        as_root=True,
        seccomp_fd=7,
    )
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"):
        assert flag in args
    assert "--unshare-net" not in args  # host network: every Ray port of a lease is explicit
    assert "--unshare-user" not in args  # root builds the view; the supervisor drops to the lease's uid
    rw = dict(_pairs(args, "--bind"))
    assert set(rw) == set(map(str, spec.writable))  # nothing else is writable
    ro = dict(_pairs(args, "--ro-bind"))
    assert "/opt/venv" in ro and "/root/.pyenv/versions/3.11" in ro and str(spec.readonly[0]) in ro
    assert not any(src.startswith(("/home", "/root/.dcluster")) or src == "/etc" for src in ro)
    assert _pairs(args, "--dev-bind") == [
        (str(dev / "nvidia2"), "/dev/nvidia2"),
        (str(dev / "nvidiactl"), "/dev/nvidiactl"),
        (str(dev / "nvidia-uvm"), "/dev/nvidia-uvm"),
    ]
    assert args[args.index("--tmpfs", args.index("/dev/shm") + 1) + 1] == "/tmp"  # a private /tmp
    # Every directory bwrap makes on the way to a mount is 0755 (its own default is 0700, which the lease's uid
    # cannot cross).
    i = args.index("/root/.pyenv/versions/3.11")
    assert ["--perms", "0755", "--dir", "/root"] == args[args.index("/root") - 3 : args.index("/root") + 1] and i > 0
    assert args[-2:] == ["--chdir", str(spec.writable[0])]


def test_bwrap_without_root_needs_a_user_namespace(tmp_path):
    args = bwrap.bwrap_args(
        _spec(tmp_path),
        runtime_dirs=[],
        devices=gpu_devices.GpuDevices((), (), ()),
        hostname="box",
        as_root=False,
        seccomp_fd=7,
    )
    assert "--unshare-user" in args
    assert "--disable-userns" in args  # and no user namespace inside that one (bubblewrap >= 0.8)
    assert args[args.index("--seccomp") + 1] == "7"


def test_privileges_are_dropped_for_good():
    argv = bwrap.drop_privileges(1_200_000_007, 1_200_000_007)
    assert argv[0] == "setpriv" and "--no-new-privs" in argv and "--bounding-set=-all" in argv
    assert "--clear-groups" in argv and "--reuid=1200000007" in argv


def test_lease_uid_avoids_open_leases():
    first = bwrap.lease_uid("l-0123456789ab", set())
    assert first >= bwrap.LEASE_UID_BASE
    assert bwrap.lease_uid("l-0123456789ab", {first}) != first


def test_python_dirs_hold_the_runtime_and_this_package():
    import sys

    import worker

    dirs = bwrap.python_dirs()
    assert any(Path(sys.prefix).resolve().is_relative_to(d) or Path(sys.prefix) == d for d in dirs) or Path(
        sys.prefix
    ).is_relative_to("/usr")
    assert any(Path(worker.__file__).resolve().is_relative_to(d) for d in dirs)
    assert all(not a.is_relative_to(b) for a in dirs for b in dirs if a != b)  # outermost only


def test_cgroup_limits_are_written(tmp_path):
    root = tmp_path / "cg"
    for c in cgroups.CONTROLLERS:
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").touch()
    assert cgroups.available(root) == list(cgroups.CONTROLLERS)
    cg = cgroups.LeaseCgroup("l-0123456789ab", cgroups.available(root), root)
    cg.create(memory_mb=512, pids=100, cpus=1.5)
    assert (cg.path("memory") / "memory.limit_in_bytes").read_text() == str(512 * 1024 * 1024)
    assert (cg.path("pids") / "pids.max").read_text() == "100"
    assert not (cg.path("cpu") / "cpu.cfs_quota_us").exists()  # weighed only, until Ray is up (cpu_caps.py)
    cg.cap_cpu(1.5)
    assert (cg.path("cpu") / "cpu.cfs_quota_us").read_text() == "150000"
    # The leases' parent must not weigh like one task of the machine's (it would starve every lease).
    assert (cg.path("cpu").parent / "cpu.shares").read_text() == str(cgroups.PARENT_SHARES)
    assert (cg.path("cpu") / "cpu.shares").read_text() == "1536"
    assert cg.procs_files[0] == root / "memory" / "dcluster" / "l-0123456789ab" / "cgroup.procs"


def test_a_lease_is_limited_to_its_cpus_their_share_of_memory_under_the_cap_and_the_pids():
    machine = domain.MachineSpec(hostname="box", cpus=8, memory_mb=32_000)
    limits = base.LeaseLimits.for_lease(2, machine, memory_cap_mb=None, pids=4096)
    assert limits == base.LeaseLimits(cpus=2.0, memory_mb=8_000, pids=4096)
    assert base.LeaseLimits.for_lease(2, machine, memory_cap_mb=6_000, pids=64).memory_mb == 6_000
    assert base.LeaseLimits.for_lease(16, machine, memory_cap_mb=None, pids=64).memory_mb == 32_000  # at most all
    tiny = domain.MachineSpec(hostname="box", cpus=64, memory_mb=1_000)
    assert base.LeaseLimits.for_lease(1, tiny, memory_cap_mb=None, pids=64).memory_mb == 256  # a floor
    # No CPUs asked (or no machine detected yet): no CPU limit, and the cap alone bounds memory.
    assert base.LeaseLimits.for_lease(None, machine, memory_cap_mb=4_000, pids=64) == base.LeaseLimits(
        cpus=None, memory_mb=4_000, pids=64
    )
    assert base.LeaseLimits.for_lease(2, None, memory_cap_mb=None, pids=64).memory_mb is None


def test_sandboxes_renumber_gpus_unsandboxed_names_the_host_ones():
    assert unsandboxed.UnsandboxedRuntime().cuda_visible_devices([1, 3]) == "1,3"
    assert bwrap.BwrapRuntime.cuda_visible_devices(object.__new__(bwrap.BwrapRuntime), [1, 3]) == "0,1"


def test_runtime_none_needs_the_flag_that_says_what_it_gives_up(capsys):
    with pytest.raises(SystemExit):
        agent_cli.main(["--platform-url", "http://x", "--username", "p", "--runtime", "none"])
    err = capsys.readouterr().err
    assert domain.UNSANDBOXED_FLAG in err and "own user" in err


def test_default_runtime_is_docker_only_when_a_daemon_answers(monkeypatch):
    monkeypatch.setattr(sandbox, "docker_answers", lambda timeout_s=15.0: False)
    assert sandbox.default_runtime() == "bwrap"
    monkeypatch.setattr(sandbox, "docker_answers", lambda timeout_s=15.0: True)
    assert sandbox.default_runtime() == "docker"


def test_unknown_runtime_is_refused():
    with pytest.raises(base.SandboxError, match="pick one of"):
        sandbox.make_runtime("podman")


def test_docker_run_is_locked_down(tmp_path):
    from worker.agent.sandbox import docker

    spec = _spec(tmp_path, gpu_indices=(1, 3), limits=base.LeaseLimits(cpus=2, memory_mb=3000, pids=500))
    args = docker.docker_run_args(spec, image="dcluster/lease:x", host_dirs=[Path("/usr")], hostname="box")
    joined = " ".join(args)
    for flag in (
        "--net=host",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--read-only",
        "--init",
        "--user 1200000007:1200000007",
        "--memory 3000m",
        "--memory-swap 3000m",
        "--pids-limit 500",
        "--cpu-shares 2048",
        "--rm",
        "-i",
    ):
        assert flag in joined, flag
    assert "--cpus" not in args  # the quota comes with DockerSandbox.cap_cpu, once Ray is up
    assert args[args.index("--gpus") + 1] == '"device=1,3"'  # only the leased GPUs
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "--mount"]
    writable = [m for m in mounts if not m.endswith(",readonly")]
    assert sorted(writable) == sorted(f"type=bind,source={p},target={p}" for p in spec.writable)
    assert "--privileged" not in args and "--pid=host" not in joined and "--ipc=host" not in joined
    # The daemon's seccomp profile applies: nothing turns it off or swaps it (DockerRuntime checks the daemon's).
    assert [args[i + 1] for i, a in enumerate(args) if a == "--security-opt"] == ["no-new-privileges"]
    assert "--userns" not in joined
    no_gpu = docker.docker_run_args(_spec(tmp_path), image="i", host_dirs=[], hostname="box")
    assert "--gpus" not in no_gpu
    # Without the NVIDIA Container Toolkit: exactly the leased GPUs' nodes, nothing else.
    dev, proc = _fake_machine(tmp_path, 4)
    nodes = gpu_devices.devices_for([2], dev_root=dev, proc_root=proc).nodes
    by_node = docker.docker_run_args(spec, image="i", host_dirs=[], hostname="box", gpu_nodes=nodes)
    assert "--gpus" not in by_node
    assert [m for m in by_node if "/dev/nvidia" in m] == [
        f"type=bind,source={n},target=/dev/{n.name},readonly" for n in nodes
    ]


def _image_reporting(tmp_path, versions: str):
    """A sandbox whose image prints `versions` (Ray, Python) as the agent's version probe asks."""
    (tmp_path / "leases" / "l-0123456789ab" / "logs").mkdir(parents=True)

    class FakeSandbox:
        def spawn(self, argv, *, env, cwd, log_path):
            log_path.write_text(versions + "\n")
            return type("P", (), {"wait": lambda self, t=None: 0})()

    return FakeSandbox


def test_docker_version_mismatch_names_both(tmp_path):
    import ray

    from worker.agent.sandbox import docker

    FakeSandbox = _image_reporting(tmp_path, "2.9.3 3.10.12")
    with pytest.raises(base.SandboxError) as exc:
        docker.check_versions(FakeSandbox(), _spec(tmp_path), "python3", (ray.__version__, "3.11.2"))
    assert "Ray 2.9.3 on Python 3.10.12" in str(exc.value) and ray.__version__ in str(exc.value)


def test_docker_versions_match_on_ray_and_python_minor(tmp_path):
    from worker.agent.sandbox import docker

    FakeSandbox = _image_reporting(tmp_path, "2.9.3 3.10.12")
    docker.check_versions(FakeSandbox(), _spec(tmp_path), "python3", ("2.9.3", "3.10.4"))  # what the machine runs
    with pytest.raises(base.SandboxError, match=r"the cluster runs Ray 2\.9\.3 on Python 3\.11\.1"):
        docker.check_versions(FakeSandbox(), _spec(tmp_path), "python3", ("2.9.3", "3.11.1"))


def test_bwrap_refuses_a_container_image(tmp_path, monkeypatch):
    runtime = object.__new__(bwrap.BwrapRuntime)
    with pytest.raises(base.SandboxError, match="docker runtime"):
        runtime.create(_spec(tmp_path, image="rayproject/ray:2.60.0"))


def test_local_providers_live_apart_from_the_platform(tmp_path):
    from cli.platform import errors as platform_errors
    from cli.platform import launcher as platform_launcher
    from cli.platform import local_agents, state

    layout = state.Layout(tmp_path / "state")
    assert not layout.agent_dir(1).is_relative_to(layout.state_dir)
    env = local_agents.agent_env(
        {
            "PATH": "/usr/bin",
            "DCLUSTER_JWT_SECRET": "s",
            "RAY_AUTH_TOKEN": "t",
            "HOME": "/root",
            "RAY_AUTH_TOKEN_PATH": "/x",
        },
        home=layout.agent_dir(1),
    )
    assert env["HOME"] == str(layout.agent_dir(1))
    assert not {"DCLUSTER_JWT_SECRET", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(env)
    with pytest.raises(platform_errors.PlatformError, match="reachable from elsewhere"):
        platform_launcher.PlatformLauncher(tmp_path / "s", host="0.0.0.0", providers=2)
    platform_launcher.PlatformLauncher(tmp_path / "s", host="127.0.0.1", providers=2)
    platform_launcher.PlatformLauncher(tmp_path / "s", host="0.0.0.0", providers=0)


def test_a_docker_lease_is_capped_with_docker_update():
    from worker.agent.sandbox import docker

    calls, answers = [], [(0, b""), (1, b"no such container")]

    def fake_docker(*args, **kw):
        calls.append(args)
        returncode, stderr = answers.pop(0)
        return subprocess.CompletedProcess(args, returncode, b"", stderr)

    box = docker.DockerSandbox(
        "l-0123456789ab", ["docker", "run"], env={}, log_path=Path("/dev/null"), cpus=2.0, docker=fake_docker
    )
    box.cap_cpu()
    assert calls == [("update", "--cpus", "2", docker.CONTAINER_PREFIX + "l-0123456789ab")]
    with pytest.raises(base.SandboxError, match="no such container"):
        box.cap_cpu()
