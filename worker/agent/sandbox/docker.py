"""The docker runtime: one container per lease, host network, only its GPUs, limits, no capabilities, non-root.

    docker run -i --rm --init --net=host --user <lease uid> --cap-drop ALL --security-opt no-new-privileges
               --read-only --tmpfs /tmp --memory/--pids-limit/--cpus <lease limits> [--gpus device=<leased>]
               -v <lease home, logs, temp dir> -v <token, passwd, group, supervisor.py>:ro <image> python supervisor.py

The container's first process (after docker-init) is worker/agent/sandbox/supervisor.py, spoken to over
the attached stdin/stdout like bwrap's; when the agent goes away, stdin closes and the lease ends.

The default image is the platform image: built here (`docker import`, nothing pulled) from an empty
root filesystem, with this machine's system dirs and Python runtime mounted read-only, so its Ray
and Python are the agent's. The provider may name another (`--docker-image`): its Ray and Python are
read once when the agent starts (a container of it, no network) and reported as what the machine's
leases run, which placement matches. A buyer's image (ClusterSpec.image) must bring the same Ray
version and Python minor version as the machine's leases: they are checked when the lease opens,
before the node can join, and a mismatch fails the lease with both versions named.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

from worker import procs
from worker.agent import lease_fs
from worker.agent.sandbox import base, bwrap, cgroups, gpu_devices, supervised

logger = logging.getLogger(__name__)

LABEL = "io.dcluster.lease"
CONTAINER_PREFIX = "dcl-"
SUPERVISOR_INSIDE = "/opt/dcluster/supervisor.py"
PLATFORM_IMAGE_REPO = "dcluster/lease"
# /sbin is a directory of its own (docker --init mounts /sbin/docker-init there), with links to what is used.
_ROOTFS_DIRS = ("etc", "tmp", "proc", "dev", "sys", "usr", "sbin", "opt/dcluster", "var/tmp", "run", "home")
_ROOTFS_LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin/ldconfig": "/usr/sbin/ldconfig"}
_VERSIONS_LOG = "0000-versions.log"
_VERSION_PROBE = "import sys, ray; print(ray.__version__, '%d.%d.%d' % sys.version_info[:3])"


def _python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def platform_image() -> str:
    """The platform image's name: the Ray and Python versions are in its tag."""
    return f"{PLATFORM_IMAGE_REPO}:ray{_ray_version()}-py{_python_version()}"


def image_versions(image: str) -> tuple[str, str]:
    """(Ray version, Python version) of an image's `python3`, read in a container of it with no network, no
    capabilities, as nobody; SandboxError naming the image where it has no usable Ray."""
    result = docker_cli(
        "run", "--rm", "--net=none", "--cap-drop", "ALL", "--user", "65534:65534", "--log-driver", "none",
        "--entrypoint", "python3", image, "-c", _VERSION_PROBE,
        timeout_s=300.0,
    )  # fmt: skip
    text = result.stdout.decode("utf-8", "replace").strip()
    parts = text.splitlines()[-1].split()[:2] if result.returncode == 0 and text else []
    if len(parts) != 2:
        error = (result.stderr.decode("utf-8", "replace") or text).strip()[-300:]
        raise base.SandboxError(f"the image {image} has no usable Ray: `python3 -c 'import ray'` failed ({error})")
    return parts[0][:32], parts[1][:32]


def seccomp_problem(security_options: str) -> str | None:
    """Why the daemon would run leases without a seccomp filter (`docker info`'s SecurityOptions as JSON), or None.
    Leases never ask for another profile: the daemon's own (Docker's default unless its operator set one) applies."""
    if "name=seccomp" not in security_options:
        return "the docker daemon applies no seccomp filter (built without seccomp): leases would run unfiltered"
    if "profile=unconfined" in security_options:
        return "the docker daemon's seccomp profile is `unconfined` (dockerd --seccomp-profile): set it back to default"
    return None


def docker_cli(*args: str, timeout_s: float = 60.0, input: bytes | None = None) -> subprocess.CompletedProcess:
    """`docker ARGS...`, its output captured: every call this runtime makes to docker."""
    return subprocess.run(["docker", *args], input=input, capture_output=True, timeout=timeout_s)


def rootfs_tar() -> bytes:
    """An empty root filesystem: the directories and /usr-merge links the host's dirs are mounted into."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in _ROOTFS_DIRS:
            parts = name.split("/")
            for i in range(1, len(parts) + 1):
                info = tarfile.TarInfo("/".join(parts[:i]))
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if parts[0] in ("tmp",) or name == "var/tmp" else 0o755
                tar.addfile(info)
        for name, target in _ROOTFS_LINKS.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def ensure_platform_image() -> str:
    """Build the platform image once (docker import of rootfs_tar(); no registry involved)."""
    image = platform_image() + "-" + hashlib.sha256(rootfs_tar()).hexdigest()[:8]
    if docker_cli("image", "inspect", image).returncode == 0:
        return image
    result = docker_cli(
        "import",
        "--message",
        "dcluster lease image: host runtime mounted read-only",
        "-",
        image,
        input=rootfs_tar(),
        timeout_s=120,
    )
    if result.returncode != 0:
        raise base.SandboxError(f"cannot build the platform image {image}: {result.stderr.decode().strip()}")
    logger.info("built the platform image %s", image)
    return image


def docker_run_args(
    spec: base.SandboxSpec,
    *,
    image: str,
    host_dirs: Sequence[Path],
    hostname: str,
    supervisor: Path = supervised.SUPERVISOR,
    python: str = "python3",
    gpu_nodes: Sequence[Path] | None = None,
    cgroup_parent: str | None = None,
) -> list[str]:
    """gpu_nodes None: the NVIDIA Container Toolkit maps the leased GPUs (`--gpus`); else exactly these
    nodes are passed in (`--device`; regular files, the tests' fake GPUs, are bound read-only)."""
    """The `docker run` command line for one lease: a pure function of its inputs."""
    args = [
        "docker",
        "run",
        "-i",
        "--rm",
        "--init",
        "--name",
        CONTAINER_PREFIX + spec.lease_id,
        "--label",
        f"{LABEL}={spec.lease_id}",
        "--net=host",
        "--hostname",
        hostname,
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,exec,mode=1777",
        "--tmpfs",
        "/var/tmp:rw,mode=1777",
        "--log-driver",
        "none",
        "--env",
        f"{procs.OWNER_ENV}={spec.owner_tag}",
    ]
    if spec.uid is not None:
        args += ["--user", f"{spec.uid}:{spec.gid if spec.gid is not None else spec.uid}"]
    limits = spec.limits
    if limits.memory_mb:
        args += [
            "--memory",
            f"{limits.memory_mb}m",
            "--memory-swap",
            f"{limits.memory_mb}m",
            "--shm-size",
            f"{max(64, limits.memory_mb // 3)}m",
        ]
    if limits.pids:
        args += ["--pids-limit", str(limits.pids)]
    if limits.cpus:  # weighed from the start; the quota (`docker update --cpus`) comes with DockerSandbox.cap_cpu
        args += ["--cpu-shares", str(int(cgroups.SHARES_PER_CPU * max(1.0, limits.cpus)))]
    if cgroup_parent:  # beside the bwrap leases, under a parent that weighs more than one task (cgroups.py)
        args += ["--cgroup-parent", cgroup_parent]
    if spec.gpu_indices and gpu_nodes is None:  # NVIDIA Container Toolkit: only these GPUs, numbered from 0
        args += ["--gpus", '"device=' + ",".join(str(i) for i in spec.gpu_indices) + '"']
    for node in gpu_nodes or ():
        if node.is_char_device():
            args += ["--device", f"{node}:/dev/{node.name}"]
        else:
            args += ["--mount", f"type=bind,source={node},target=/dev/{node.name},readonly"]
    for path in host_dirs:
        args += ["--mount", f"type=bind,source={path},target={path},readonly"]
    for path in spec.writable:
        args += ["--mount", f"type=bind,source={path},target={path}"]
    for path in spec.readonly:
        args += ["--mount", f"type=bind,source={path},target={path},readonly"]
    for host_file, inside in spec.etc_files:
        args += ["--mount", f"type=bind,source={host_file},target=/etc/{inside},readonly"]
    args += ["--mount", f"type=bind,source={supervisor},target={SUPERVISOR_INSIDE},readonly"]
    home = next((str(p) for p in spec.writable if p.name == "home"), "/")
    args += ["--workdir", home, "--entrypoint", python, image, "-I", "-S", SUPERVISOR_INSIDE]
    args += supervised.OWN_PID_NAMESPACE
    return args


class DockerRuntime(base.Runtime):
    name = "docker"

    def __init__(self, *, image: str | None = None, gpu_dev_root: Path = Path("/dev")):
        if shutil.which("docker") is None:
            raise base.SandboxError(
                "docker is not installed; install it (Debian: apt-get install docker.io) or pick --runtime bwrap"
            )
        from worker.agent import sandbox

        if not sandbox.docker_answers():
            raise base.SandboxError("no docker daemon answers `docker info`; start dockerd or pick --runtime bwrap")
        options = docker_cli("info", "--format", "{{json .SecurityOptions}}").stdout.decode()
        problem = seccomp_problem(options)
        if problem:
            raise base.SandboxError(problem)
        self.gpu_dev_root = Path(gpu_dev_root)
        self.image = image or ensure_platform_image()
        self.host_runtime = image is None  # the platform image has only what the host mounts into it
        # What a lease runs: the agent's own Ray and Python in the platform image, else the image's.
        self.versions = (_ray_version(), _python_version()) if self.host_runtime else image_versions(self.image)
        self.hostname = socket.gethostname()
        self.as_root = os.geteuid() == 0
        self.cgroup_parent = "/" + cgroups.PARENT if self.as_root and cgroups.weigh_parent() else None
        runtimes = docker_cli("info", "--format", "{{json .Runtimes}}").stdout.decode()
        self.nvidia_toolkit = "nvidia" in runtimes
        if not self.nvidia_toolkit:
            logger.warning(
                "docker has no nvidia runtime (NVIDIA Container Toolkit): leased GPUs are passed as "
                "their device nodes (--device) only"
            )

    def lease_user(self, lease_id: str, taken: set[int]) -> tuple[int, int] | None:
        uid = bwrap.lease_uid(lease_id, taken)
        return uid, uid

    def host_dirs(self) -> list[Path]:
        if not self.host_runtime:
            return []
        system = [Path(d) for d in bwrap.SYSTEM_DIRS if Path(d).is_dir() and not Path(d).is_symlink() and d != "/sbin"]
        etc = [Path("/etc") / name for name in bwrap.ETC_FILES if (Path("/etc") / name).exists()]
        return [*system, *etc, *bwrap.python_dirs()]

    def create(self, spec: base.SandboxSpec) -> base.Sandbox:
        devices = gpu_devices.devices_for(spec.gpu_indices, dev_root=self.gpu_dev_root)  # fails without the nodes
        image, host_runtime = (spec.image, False) if spec.image else (self.image, self.host_runtime)
        python = sys.executable if host_runtime else "python3"
        argv = docker_run_args(
            spec,
            image=image,
            host_dirs=self.host_dirs() if host_runtime else [],
            hostname=self.hostname,
            python=python,
            gpu_nodes=None if self.nvidia_toolkit else devices.nodes,
            cgroup_parent=self.cgroup_parent,
        )
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "DOCKER_HOST", "DOCKER_CONFIG")}
        sandbox = DockerSandbox(
            spec.lease_id,
            argv,
            env={**env, "HOME": str(spec.log_path.parent)},
            log_path=spec.log_path,
            cpus=spec.limits.cpus,
        )
        sandbox.start(timeout_s=120)
        try:
            check_versions(sandbox, spec, python, self.versions)
        except BaseException:
            sandbox.close(0.5)
            raise
        return sandbox

    def lease_versions(self) -> tuple[str, str] | None:
        return None if self.host_runtime else self.versions

    def cleanup_stale(self, lease_id: str) -> None:
        remove_containers(lease_id)


def check_versions(
    sandbox: supervised.SupervisedSandbox, spec: base.SandboxSpec, python: str, want: tuple[str, str]
) -> None:
    """The image's Ray and Python must be the cluster's (`want`: what the machine's leases run, which placement
    matched to the cluster's): checked before the node may join."""
    logs = next(p for p in spec.writable if p.name == "logs")
    # The image is the buyer's: its python may swap the log for a link. Read the file the agent made, never the name.
    fd = lease_fs.create_log(logs.parent, logs.name, _VERSIONS_LOG, spec.uid, spec.gid)
    try:
        process = sandbox.spawn(
            [python, "-c", _VERSION_PROBE],
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"},
            cwd=Path("/"),
            log_path=logs / _VERSIONS_LOG,
        )
        code = process.wait(120)
        text = lease_fs.tail_of(fd, 4096).text.strip()
    finally:
        os.close(fd)
    got = tuple(text.splitlines()[-1].split()[:2]) if code == 0 and text else None
    if got is None:
        raise base.SandboxError(
            f"the lease's image has no usable Ray: `python3 -c 'import ray'` failed ({text[-300:]}); "
            f"use an image with Ray {want[0]} on Python {want[1]}"
        )
    if got[0] != want[0] or got[1].rsplit(".", 1)[0] != want[1].rsplit(".", 1)[0]:
        raise base.SandboxError(
            f"the lease's image has Ray {got[0]} on Python {got[1]}, the cluster runs Ray "
            f"{want[0]} on Python {want[1]}: use an image with the same Ray and Python minor version"
        )


def remove_containers(lease_id: str) -> list[str]:
    """`docker rm -f` every container of the lease (by label); returns their ids."""
    found = docker_cli("ps", "-aq", "--filter", f"label={LABEL}={lease_id}").stdout.decode().split()
    if found:
        docker_cli("rm", "-f", *found)
    return found


class DockerSandbox(supervised.SupervisedSandbox):
    """A lease's container: the supervisor protocol over `docker run -i`; docker ends it from outside."""

    def __init__(
        self,
        lease_id: str,
        argv: Sequence[str],
        *,
        env: dict,
        log_path: Path,
        cpus: float | None = None,
        docker: Callable[..., subprocess.CompletedProcess] = docker_cli,
    ):
        super().__init__(lease_id, argv, env=env, log_path=log_path)
        self.cpus = cpus
        self._docker = docker

    def cap_cpu(self) -> None:
        if not self.cpus:
            return
        result = self._docker("update", "--cpus", f"{self.cpus:g}", CONTAINER_PREFIX + self.lease_id)
        if result.returncode != 0:
            raise base.SandboxError(
                f"docker update --cpus failed for lease {self.lease_id}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )

    def _force_end(self) -> None:
        remove_containers(self.lease_id)
        super()._force_end()

    def _remaining(self) -> list[int]:
        found = self._docker("ps", "-q", "--filter", f"label={LABEL}={self.lease_id}").stdout.decode().split()
        if not found:
            return []
        result = self._docker("inspect", "--format", "{{json .State.Pid}}", *found)
        return [int(x) for x in result.stdout.decode().split() if x.strip().isdigit() and int(x) > 0] or [-1]


def container_pids(lease_id: str) -> list[int]:
    """Host PIDs of the processes in the lease's container (for tests and checks)."""
    found = docker_cli("ps", "-q", "--filter", f"label={LABEL}={lease_id}").stdout.decode().split()
    pids: list[int] = []
    for cid in found:
        top = docker_cli("top", cid, "-eo", "pid").stdout.decode().split()[1:]
        pids += [int(p) for p in top if p.isdigit()]
    return pids
