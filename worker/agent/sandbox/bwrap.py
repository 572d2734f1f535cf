"""The bwrap runtime: each lease in a bubblewrap sandbox with an explicit filesystem view, its own user and cgroup.

The agent (root) starts, per lease, in a session of its own:

    sh -c 'enter the lease's cgroups; bwrap ...' -- setpriv <lease uid, no caps, no-new-privs> python supervisor.py

The sh stays as the sandbox's keeper: bwrap's --die-with-parent ties the sandbox to it, not to the
agent, so the lease runs on when the agent restarts (the supervisor listens on a unix socket in the
lease's private dir, control_socket.py, and a restarted agent reattaches); killing the keeper's
group ends the whole sandbox.

bwrap runs as root to build the view (so it can bind a Python runtime under a 0700 home), makes
new mount, pid, ipc, uts (and cgroup) namespaces, and the supervisor drops to the lease's own
uid, which owns nothing but the lease's home, logs, temp dir and token. Inside: /usr and the
other system dirs, a few /etc files, the Python runtime, the venv and this package read-only;
the lease's dirs writable; a private /tmp; a minimal /dev plus the leased GPUs' nodes only; the
host's network (every Ray port of a lease is explicit). The pid namespace keeps `ray stop` and
`kill -1` inside; the cgroup holds the limits and finds every process at close. Every process of the
lease runs under a seccomp filter (worker.agent.sandbox.seccomp: Docker's default profile, stricter),
which also refuses new user namespaces; where bwrap itself makes one (the agent is not root),
`--disable-userns` closes that door a second time.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from worker import procs
from worker.agent.sandbox import base, bwrap_version, cgroups, gpu_devices, seccomp, supervised

logger = logging.getLogger(__name__)

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "localtime",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "alternatives",
    "os-release",
    "protocols",
    "services",
    "mime.types",
)
LEASE_UID_BASE = 1_200_000_000  # lease users: far above any real account; gid = uid
LEASE_UID_SPAN = 1 << 24
# Not `exec "$@"`: the sh stays, as the parent bwrap's --die-with-parent watches (see above).
_ENTER_CGROUPS = 'for f in $DCL_CGROUP_PROCS; do echo $$ > "$f" || exit 111; done; "$@"; exit $?'


def installed() -> bool:
    return shutil.which("bwrap") is not None


def lease_uid(lease_id: str, taken: set[int]) -> int:
    """A uid for the lease that no open lease and no running process uses (stable per lease id when free)."""
    in_use = set(taken)
    for proc in psutil.process_iter(["uids"]):
        try:
            in_use.add(proc.info["uids"].real)
        except (AttributeError, psutil.Error):
            continue
    slot = zlib.crc32(lease_id.encode()) % LEASE_UID_SPAN
    for i in range(LEASE_UID_SPAN):
        uid = LEASE_UID_BASE + (slot + i) % LEASE_UID_SPAN
        if uid not in in_use:
            return uid
    raise base.SandboxError("no free lease uid")


def python_dirs() -> list[Path]:
    """What the lease's Python needs read-only: the runtime, the venv, and the directory this package is in."""
    import worker

    package_root = Path(worker.__file__).resolve().parents[1]
    candidates = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        Path(os.path.realpath(sys.executable)).parents[1],
        package_root,
    ]
    return _outermost(p for p in candidates if not _under_system(p))


def _under_system(path: Path) -> bool:
    return any(
        path == Path(d) or path.is_relative_to(d) for d in SYSTEM_DIRS if Path(d).is_dir() and not Path(d).is_symlink()
    )


def _outermost(paths: Iterable[Path]) -> list[Path]:
    unique = sorted({Path(os.path.abspath(p)) for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


class _Tree:
    """bwrap arguments for the mount tree; makes every parent dir 0755 before a mount on it (bwrap's own are 0700)."""

    def __init__(self):
        self.args: list[str] = []
        self._dirs: set[str] = {"/"}

    def parents(self, dest: str) -> None:
        parts = Path(dest).parts[1:-1]
        current = "/"
        for part in parts:
            current = os.path.join(current, part)
            if current not in self._dirs:
                self.args += ["--perms", "0755", "--dir", current]
                self._dirs.add(current)

    def mount(self, flag: str, src: str | Path, dest: str | Path | None = None) -> None:
        dest = str(dest if dest is not None else src)
        self.parents(dest)
        self.args += [flag, str(src), dest]
        self._dirs.add(dest)

    def tmpfs(self, dest: str, perms: str = "1777") -> None:
        self.parents(dest)
        self.args += ["--perms", perms, "--tmpfs", dest]
        self._dirs.add(dest)


def bwrap_args(
    spec: base.SandboxSpec,
    *,
    runtime_dirs: Sequence[Path],
    devices: gpu_devices.GpuDevices,
    hostname: str,
    as_root: bool,
    seccomp_fd: int,
    cgroup_dirs: Mapping[str, Path] | None = None,
    etc_root: Path = Path("/etc"),
    root: Path = Path("/"),
) -> list[str]:
    """The bwrap command line (without the command) for one lease: a pure function of its inputs.
    seccomp_fd: the filter's program (seccomp.filter_fd), installed before the lease's first process runs."""
    tree = _Tree()
    for name in SYSTEM_DIRS:
        host = root / name.lstrip("/")
        if host.is_symlink():
            tree.args += ["--symlink", os.readlink(host), name]
            tree._dirs.add(name)
        elif host.is_dir():
            tree.mount("--ro-bind", host, name)
    overridden = {inside for _, inside in spec.etc_files}
    for name in ETC_FILES:
        if (etc_root / name).exists() and name not in overridden:
            tree.mount("--ro-bind", etc_root / name, f"/etc/{name}")
    for host_file, inside in spec.etc_files:
        tree.mount("--ro-bind", host_file, f"/etc/{inside}")
    tree.args += ["--proc", "/proc", "--dev", "/dev"]
    tree._dirs |= {"/proc", "/dev"}
    tree.tmpfs("/dev/shm")
    tree.tmpfs("/tmp")
    tree.tmpfs("/var/tmp")
    for path in runtime_dirs:
        tree.mount("--ro-bind", path)
    for path in spec.writable:
        tree.mount("--bind", path)
    for path in spec.readonly:
        tree.mount("--ro-bind", path)
    for controller, path in (cgroup_dirs or {}).items():  # Ray reads its limits there (memory monitor, CPUs)
        tree.mount("--ro-bind", path, f"/sys/fs/cgroup/{controller}")
    for node in devices.nodes:
        tree.mount("--dev-bind", node, Path("/dev") / node.name)
    if devices.proc_entries:  # the driver lists every GPU: show only the leased ones
        tree.args += ["--tmpfs", "/proc/driver/nvidia/gpus"]
        for entry in devices.proc_entries:
            tree.args += ["--ro-bind", str(entry), f"/proc/driver/nvidia/gpus/{entry.name}"]
    namespaces = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        # An unprivileged agent: bwrap needs a user namespace; the lease may not make another inside it.
        namespaces += ["--unshare-user", "--disable-userns"]
    home = next((str(p) for p in spec.writable if p.name == "home"), "/")
    return [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        *namespaces,
        "--seccomp",
        str(seccomp_fd),
        "--hostname",
        hostname,
        *tree.args,
        "--chdir",
        home,
    ]


def drop_privileges(uid: int, gid: int) -> list[str]:
    """setpriv: become the lease's user with no capabilities at all, and no way to gain any."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


class BwrapRuntime(base.Runtime):
    name = "bwrap"

    def __init__(
        self,
        *,
        gpu_dev_root: Path = Path("/dev"),
        gpu_proc_root: Path = Path("/proc"),
        cgroup_root: Path = cgroups.ROOT,
    ):
        if not installed():
            raise base.SandboxError(
                "bwrap is not installed; install it (Debian: apt-get install bubblewrap) or pick another --runtime"
            )
        self.as_root = os.geteuid() == 0
        if self.as_root and shutil.which("setpriv") is None:
            raise base.SandboxError("setpriv is missing (Debian: util-linux); it drops each lease to its own user")
        problem = bwrap_version.version_problem(bwrap_version.installed(), as_root=self.as_root)
        if problem:
            raise base.SandboxError(problem)
        self.seccomp_program = seccomp.bpf()  # refuses (SandboxError) without libseccomp: no lease unfiltered
        self.gpu_dev_root = Path(gpu_dev_root)
        self.gpu_proc_root = Path(gpu_proc_root)
        self.cgroup_root = Path(cgroup_root)
        self.controllers = cgroups.available(self.cgroup_root) if self.as_root else []
        self.runtime_dirs = python_dirs()
        self.hostname = socket.gethostname()
        if not self.as_root:
            logger.warning(
                "the agent is not root: leases run in bwrap as the agent's own user (only their "
                "filesystem view protects its files) and without cgroup limits"
            )
        elif set(self.controllers) != set(cgroups.CONTROLLERS):
            logger.warning(
                "cgroup v1 controllers %s are not writable here: those limits are not applied; the "
                "pid namespace still ends every process of a lease",
                sorted(set(cgroups.CONTROLLERS) - set(self.controllers)),
            )

    def lease_user(self, lease_id: str, taken: set[int]) -> tuple[int, int] | None:
        if not self.as_root:
            return None
        uid = lease_uid(lease_id, taken)
        return uid, uid

    def create(self, spec: base.SandboxSpec) -> base.Sandbox:
        if spec.image:
            raise base.SandboxError(
                f"this machine runs leases with bwrap, which cannot run the image {spec.image}; "
                "ask for machines with the docker runtime, or no image"
            )
        devices = gpu_devices.devices_for(spec.gpu_indices, dev_root=self.gpu_dev_root, proc_root=self.gpu_proc_root)
        cgroup = cgroups.LeaseCgroup(spec.lease_id, self.controllers, self.cgroup_root)
        cgroup.create(memory_mb=spec.limits.memory_mb, pids=spec.limits.pids, cpus=spec.limits.cpus)
        filter_fd = seccomp.filter_fd(self.seccomp_program)
        try:
            argv = bwrap_args(
                spec,
                runtime_dirs=self.runtime_dirs,
                devices=devices,
                hostname=self.hostname,
                as_root=self.as_root,
                seccomp_fd=filter_fd,
                cgroup_dirs={c: cgroup.path(c) for c in ("memory", "cpu") if c in cgroup.controllers},
            )
            argv += ["--"]
            if spec.uid is not None:
                argv += drop_privileges(spec.uid, spec.gid if spec.gid is not None else spec.uid)
            argv += [sys.executable, "-I", "-S", str(supervised.SUPERVISOR), *supervised.OWN_PID_NAMESPACE]
            env = {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                procs.OWNER_ENV: spec.owner_tag,
                "DCL_CGROUP_PROCS": " ".join(str(p) for p in cgroup.procs_files),
            }
            sandbox = BwrapSandbox(
                spec.lease_id,
                ["sh", "-c", _ENTER_CGROUPS, "sh", *argv],
                env=env,
                log_path=spec.log_path,
                cgroup=cgroup,
                cpus=spec.limits.cpus,
                pass_fds=(filter_fd,),
                socket_dir=spec.control_dir,
            )
            try:
                return sandbox.start()
            except BaseException:
                cgroup.kill_all()
                cgroup.remove()
                raise
        finally:
            os.close(filter_fd)  # bwrap has its own copy (it is running, or failed to start)

    def reattach(self, lease_id: str, control_dir: Path, saved: dict[str, Any]) -> base.Sandbox | None:
        if saved.get("link") != "socket":
            return None
        try:
            keeper = (int(saved["keeper_pid"]), float(saved["keeper_started"]))
            cpus = float(saved["cpus"]) if saved.get("cpus") is not None else None
            log_path = Path(str(saved["log_path"]))
        except (KeyError, TypeError, ValueError):
            return None
        sandbox = BwrapSandbox(
            lease_id,
            [],
            env={},
            log_path=log_path,
            cgroup=cgroups.LeaseCgroup(lease_id, self.controllers, self.cgroup_root),
            cpus=cpus,
            socket_dir=control_dir,
            keeper=keeper,
        )
        try:
            return sandbox.attach()
        except base.SandboxError as exc:
            logger.warning("lease %s: its sandbox is gone (%s)", lease_id, exc)
            return None

    def cleanup_stale(self, lease_id: str) -> None:
        cgroup = cgroups.LeaseCgroup(lease_id, self.controllers, self.cgroup_root)
        if cgroup.pids():
            logger.warning("lease %s: killing %d process(es) left in its cgroup", lease_id, len(cgroup.pids()))
        cgroup.kill_all()
        cgroup.remove()


class BwrapSandbox(supervised.SupervisedSandbox):
    """A lease's bwrap sandbox: the supervisor protocol, plus its cgroup for limits and for what survives."""

    def __init__(
        self,
        lease_id: str,
        argv: list[str],
        *,
        env: dict,
        log_path: Path,
        cgroup: cgroups.LeaseCgroup,
        cpus: float | None = None,
        pass_fds: Sequence[int] = (),
        socket_dir: Path | None = None,
        keeper: tuple[int, float] | None = None,
    ):
        super().__init__(
            lease_id, argv, env=env, log_path=log_path, pass_fds=pass_fds, socket_dir=socket_dir, keeper=keeper
        )
        self.cgroup = cgroup
        self.cpus = cpus

    def saved(self) -> dict[str, Any]:
        saved = super().saved()
        return {**saved, "cpus": self.cpus, "log_path": str(self._log_path)} if saved else {}

    def cap_cpu(self) -> None:
        self.cgroup.cap_cpu(self.cpus)

    def _force_end(self) -> None:
        super()._force_end()  # the outer bwrap: the sandbox's init dies with it, and the namespace with that
        self.cgroup.kill_all(timeout_s=5.0)

    def _remaining(self) -> list[int]:
        return self.cgroup.pids()

    def close(self, grace_s: float) -> procs.StopSummary:
        summary = super().close(grace_s)
        if not summary.remaining:
            self.cgroup.remove()
        return summary
