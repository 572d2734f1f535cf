"""`dcluster-agent doctor`'s checks: plain functions of their inputs, each one line (ok, warn or FAIL) and what to do.

worker.agent.doctor_run gathers the inputs on the real machine (processes, files, the platform) and prints them.
"""

from __future__ import annotations

import dataclasses
import enum
import shutil
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import dcluster
from dcl_core import domain, protocol

GIB = 1024**3
DISK_FAIL_BYTES = 5 * GIB  # a Ray node's session logs and spilled objects fill less than this only when idle
DISK_WARN_BYTES = 20 * GIB
SKEW_WARN_S = 2.0
SKEW_FAIL_S = 30.0  # sign-in tokens and lease deadlines are judged by the platform's clock


class Level(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    level: Level
    text: str

    def line(self) -> str:
        return f"{self.level.value:<4}  {self.name}: {self.text}"


def ok(name: str, text: str) -> Check:
    return Check(name, Level.OK, text)


def warn(name: str, text: str) -> Check:
    return Check(name, Level.WARN, text)


def fail(name: str, text: str) -> Check:
    return Check(name, Level.FAIL, text)


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.level is Level.FAIL for c in checks) else 0


# --- the machine ---------------------------------------------------------------------------------------------


def bwrap_probe_argv(as_root: bool) -> list[str]:
    """A sandbox like a lease's (own pid, ipc, uts namespaces; without root, a user namespace that allows no other
    inside it) that runs `true`."""
    argv = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if not as_root:
        argv += ["--unshare-user", "--disable-userns"]
    return [*argv, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"]


def sandbox_runtime(
    runtime: str,
    *,
    unsandboxed_ok: bool = False,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[[list[str]], tuple[int, str]],
    docker_answers: Callable[[], bool],
    as_root: bool,
) -> Check:
    """The runtime leases would use: present, and seen to work (a real bwrap sandbox, or docker's daemon)."""
    name = f"sandbox runtime ({runtime})"
    if runtime == domain.UNSANDBOXED:
        if not unsandboxed_ok:
            return fail(name, f"--runtime none needs {domain.UNSANDBOXED_FLAG}; pick bwrap or docker instead")
        return warn(name, "leases run unsandboxed as the agent's user; offers show the machine so")
    if runtime == "docker":
        if which("docker") is None:
            return fail(name, "docker is not installed: apt-get install docker.io, or --runtime bwrap")
        if not docker_answers():
            return fail(name, "no docker daemon answers `docker info`: systemctl start docker, or --runtime bwrap")
        return ok(name, "the docker daemon answers")
    if which("bwrap") is None:
        return fail(name, "bubblewrap is not installed: apt-get install bubblewrap")
    code, output = run(bwrap_probe_argv(as_root))
    if code != 0:
        hint = "" if as_root else " (without root bwrap needs unprivileged user namespaces; or run as root)"
        return fail(name, f"bwrap cannot make a sandbox here: {output.strip()[-200:] or f'exit {code}'}{hint}")
    return ok(name, "bwrap made a sandbox and ran a command in it")


def kernel_surface(runtime: str, problem: str | None) -> Check:
    """The seccomp filter every lease runs under (and no user namespaces in it); problem: why not, from the runtime."""
    name = "kernel surface"
    if runtime == domain.UNSANDBOXED:
        return warn(name, "leases run unsandboxed: no seccomp filter")
    if problem:
        return fail(name, f"{problem}; so this machine cannot be offered as sandboxed")
    if runtime == "docker":
        return ok(
            name, "the docker daemon's seccomp profile applies to every lease (no user namespaces, keyctl, mount)"
        )
    return ok(
        name,
        "every lease runs under a seccomp filter (Docker's default profile, stricter): "
        "no user namespaces, keyctl, mount, ptrace, bpf",
    )


def cgroup_limits(root: Path, writable_v1: Sequence[str], wanted: Sequence[str]) -> Check:
    """Lease limits need the cgroup v1 controllers (worker.agent.sandbox.cgroups); v2 is not supported yet."""
    name = "cgroups"
    v1 = [c for c in wanted if (root / c / "cgroup.procs").exists()]
    if not v1 and (root / "cgroup.controllers").exists():
        return fail(
            name,
            "cgroup v2 only: lease limits (memory, pids, cpu) are not supported on v2 yet, so this machine "
            "cannot be offered as sandboxed; boot with systemd.unified_cgroup_hierarchy=0 to use cgroup v1",
        )
    if not v1:
        return fail(name, f"no cgroup v1 controller is mounted under {root}: lease limits cannot be set")
    missing = [c for c in wanted if c not in writable_v1]
    if missing:
        return warn(
            name,
            f"cgroup v1, but {', '.join(missing)} cannot be written by this user: those limits are not applied "
            "(run the agent as root)",
        )
    return ok(name, f"cgroup v1; limits can be set ({', '.join(wanted)})")


def user(euid: int) -> Check:
    if euid == 0:
        return ok("user", "root: each lease gets a uid and cgroups of its own")
    return warn(
        "user",
        f"uid {euid}, not root: leases run as this uid in a user namespace, without cgroup limits; "
        "run the agent as root (the systemd service does)",
    )


def gpus(read_nvml: Callable[[], tuple[list[domain.GpuInfo], str | None, str | None]]) -> tuple[Check, int]:
    """The GPUs NVML sees (none is fine: a CPU-only machine), and how many."""
    name = "GPUs"
    try:
        found, driver, cuda = read_nvml()
    except Exception as exc:  # NVML raises its own error classes; no library is the usual CPU-only case
        return ok(name, f"none (NVML: {type(exc).__name__}: {str(exc)[:120]}): offered as a CPU-only machine"), 0
    if not found:
        return ok(name, f"none (driver {driver or 'unknown'}): offered as a CPU-only machine"), 0
    models = sorted({g.model for g in found})
    return ok(name, f"{len(found)} x {', '.join(models)}, driver {driver or '?'}, CUDA {cuda or '?'}"), len(found)


def container_toolkit(runtime: str, gpu_count: int, docker_runtimes: Callable[[], str]) -> Check:
    name = "NVIDIA container toolkit"
    if runtime != "docker" or gpu_count == 0:
        return ok(name, "not needed (" + ("no GPUs" if gpu_count == 0 else f"runtime {runtime}") + ")")
    if "nvidia" in docker_runtimes():
        return ok(name, "docker has the nvidia runtime")
    return warn(
        name,
        "docker has no nvidia runtime: leased GPUs are passed as device nodes only (no driver libraries in the "
        "container); install nvidia-container-toolkit and run `nvidia-ctk runtime configure --runtime=docker`",
    )


def free_disk(path: Path, free_bytes: int) -> Check:
    name = "disk"
    text = f"{free_bytes / GIB:.1f} GiB free in {path}"
    if free_bytes < DISK_FAIL_BYTES:
        return fail(name, f"{text}; leases need at least {DISK_FAIL_BYTES // GIB} GiB: free some space")
    if free_bytes < DISK_WARN_BYTES:
        return warn(name, f"{text}; under {DISK_WARN_BYTES // GIB} GiB, large jobs may fill it")
    return ok(name, text)


def existing_parent(path: Path) -> Path:
    """The path, or its nearest existing parent (a state dir is made at the agent's first start)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- the platform --------------------------------------------------------------------------------------------


def platform(url: str, answer: dcluster.Probe | Exception) -> Check:
    name = f"platform {url}"
    if isinstance(answer, dcluster.PlatformUnreachable):
        return fail(
            name,
            f"no answer ({answer}); check the URL, DNS, and that outbound HTTPS to it is allowed",
        )
    if isinstance(answer, Exception):  # refused before asking: plain HTTP, a certificate not trusted
        return fail(name, str(answer))
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status_code != 200:
        detail = body.get("detail", answer.body)
        level = warn if answer.status_code == 503 else fail
        return level(name, f"HTTP {answer.status_code} from /healthz: {str(detail)[:200]}")
    theirs = body.get("protocol")
    if theirs is not None and theirs != protocol.PROTOCOL_VERSION:
        return fail(name, protocol.mismatch_message(agent=protocol.PROTOCOL_VERSION, platform=theirs))
    return ok(name, f"answers in {answer.round_trip_s * 1000:.0f} ms, protocol {theirs or '?'}")


def clock_skew(answer: dcluster.Probe | Exception, local_before: datetime, local_after: datetime) -> Check:
    """The local clock against the platform's Date header (1 s resolution, half the round trip of slack)."""
    name = "clock"
    if isinstance(answer, Exception) or answer.server_date is None:
        return warn(name, "not compared: the platform gave no Date header (or no answer)")
    middle = local_before + (local_after - local_before) / 2
    skew = (middle - answer.server_date).total_seconds()
    slack = 1.0 + (local_after - local_before).total_seconds() / 2
    off = max(0.0, abs(skew) - slack)
    text = f"{skew:+.1f} s against the platform"
    if off > SKEW_FAIL_S:
        return fail(name, f"{text}: sign-ins and lease deadlines go wrong; enable NTP (timedatectl set-ntp true)")
    if off > SKEW_WARN_S:
        return warn(name, f"{text}; enable NTP (timedatectl set-ntp true)")
    return ok(name, text)


def lighthouse(address: str | None, resolve: Callable[[str, int], Sequence[str]]) -> Check:
    """The overlay's lighthouse (host:port, UDP) resolves; its UDP answer is the overlay's own business."""
    name = "overlay lighthouse"
    if not address:
        return ok(name, "not configured")
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return fail(name, f"{address!r} is not host:port")
    try:
        addresses = resolve(host.strip("[]"), int(port_text))
    except OSError as exc:
        return fail(name, f"{host} does not resolve ({exc}); check DNS")
    return ok(
        name,
        f"{host} is {', '.join(sorted(set(addresses))[:3])}; the firewall must let UDP out to port {port_text}",
    )


def run_quietly(argv: list[str], timeout_s: float = 20.0) -> tuple[int, str]:
    """(exit code, output) of a short command; a missing program or a time-out is a failure, not a crash."""
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, done.stdout + done.stderr
