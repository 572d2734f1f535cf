"""The Sandbox interface every lease runs in: what a runtime makes, what a lease's commands start in.

A runtime (docker, bwrap, none) makes one Sandbox per lease when the lease opens; every command
of the lease starts in it (`spawn`), files the launcher uploads are written from inside it
(`put_file`, as the lease's user), and closing the lease ends it (`close`): every process in it,
however it was forked. Sandboxed runtimes start worker/agent/sandbox/supervisor.py as the sandbox's
first process and talk to it (supervised.SupervisedSandbox); runtime none is unsandboxed.py. A sandbox
that outlives the agent (bwrap, none) says in `saved()` how to reach it again, and after an agent
restart `Runtime.reattach` gives it back from that.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from dcl_core import domain
from worker import procs


class SandboxError(Exception):
    """The sandbox could not be made or reached; the text names what to install or fix."""


@dataclasses.dataclass(frozen=True)
class LeaseLimits:
    """What one lease may use; None: no limit of that kind."""

    cpus: float | None = None
    memory_mb: int | None = None
    pids: int | None = None

    @classmethod
    def for_lease(
        cls, cpus: int | None, machine: domain.MachineSpec | None, *, memory_cap_mb: int | None, pids: int | None
    ) -> LeaseLimits:
        """A lease gets its CPUs, their share of the machine's RAM (at most memory_cap_mb), and pids."""
        memory_mb = memory_cap_mb
        if cpus and machine is not None:
            share = max(256, int(machine.memory_mb * min(1.0, cpus / machine.cpus)))
            memory_mb = min(memory_mb, share) if memory_mb else share
        return cls(cpus=float(cpus) if cpus else None, memory_mb=memory_mb, pids=pids)


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    """Everything a runtime needs to build one lease's sandbox; paths are host paths, seen at the same place inside."""

    lease_id: str
    owner_tag: str
    uid: int | None  # the lease's own user; None: the agent's (runtime none)
    gid: int | None
    writable: tuple[Path, ...]  # the lease's home, logs and Ray temp dir
    readonly: tuple[Path, ...] = ()  # the lease's token, its passwd/group files
    etc_files: tuple[tuple[Path, str], ...] = ()  # (host file, path under /etc inside)
    gpu_indices: tuple[int, ...] = ()
    limits: LeaseLimits = LeaseLimits()
    image: str | None = None  # docker only
    log_path: Path | None = None  # the sandbox's own output (runtime errors)
    control_dir: Path | None = None  # the agent's own 0700 dir of the lease, outside the view: the supervisor's socket


class Process(Protocol):
    """One command started in a sandbox."""

    pid: int

    def wait(self, timeout: float | None = None) -> int:
        """Its return code (negative: killed by that signal); raises subprocess.TimeoutExpired."""
        ...

    def kill(self, grace_s: float) -> None:
        """SIGTERM its process group, SIGKILL after grace_s."""
        ...


class Sandbox(abc.ABC):
    """One lease's isolated place to run: made at lease open, ended at lease close."""

    sandboxed = True

    @abc.abstractmethod
    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path) -> Process:
        """Start argv inside, output appended to log_path (a path visible inside)."""

    @abc.abstractmethod
    def put_file(self, path: Path, content: bytes) -> None:
        """Write content at path (mode 0600) as the lease's user."""

    @abc.abstractmethod
    def close(self, grace_s: float) -> procs.StopSummary:
        """End every process of the sandbox, then the sandbox itself; idempotent."""

    def cap_cpu(self) -> None:  # noqa: B027 - a hook: runtimes without a quota keep this no-op
        """From now on at most the lease's CPUs (LeaseLimits.cpus). Until then its CPU shares weigh it among
        the machine's leases: it may use idle cores, never another lease's share. Idempotent."""

    def saved(self) -> dict[str, Any]:
        """What Runtime.reattach needs to reach this sandbox after an agent restart (kept in the lease's
        record); empty: the sandbox does not outlive the agent."""
        return {}


class Runtime(abc.ABC):
    """Makes the sandboxes of one agent: `--runtime docker|bwrap|none`."""

    name: str = ""
    sandboxed: bool = True

    @abc.abstractmethod
    def create(self, spec: SandboxSpec) -> Sandbox:
        """Build and start the lease's sandbox; raises SandboxError with what went wrong."""

    def lease_user(self, lease_id: str, taken: set[int]) -> tuple[int, int] | None:
        """(uid, gid) the lease runs as; None: the agent's own user."""
        return None

    def lease_versions(self) -> tuple[str, str] | None:
        """(Ray version, Python version) a lease runs, where it is not the agent's own (an image's); None: the
        agent's, which detection reports."""
        return None

    def reattach(self, lease_id: str, control_dir: Path, saved: dict[str, Any]) -> Sandbox | None:
        """After an agent restart: the lease's sandbox, reached again from what its saved() gave, when it still
        runs and is that lease's; None otherwise (then the caller cleans it up). By default none outlives the
        agent."""
        return None

    def cleanup_stale(self, lease_id: str) -> None:  # noqa: B027 - a hook: nothing to clean by default
        """After an agent restart: end what a lease of the previous run may have left (container, cgroup)."""

    def cuda_visible_devices(self, gpu_indices: Sequence[int]) -> str:
        """CUDA_VISIBLE_DEVICES inside: sandboxes show only the leased GPUs, numbered from 0."""
        return ",".join(str(i) for i in range(len(gpu_indices)))
