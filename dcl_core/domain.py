"""Statuses and roles with their rules, the strict model base, and the machine models (no Ray, no I/O)."""

from __future__ import annotations

import enum
from typing import Annotated, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field

from dcl_core import ids


class Role(str, enum.Enum):
    """An account's role."""

    PROVIDER = "provider"
    BUYER = "buyer"
    ADMIN = "admin"

    def may_hold_clusters(self) -> bool:
        """Buyers own clusters; admins see every cluster."""
        return self in (Role.BUYER, Role.ADMIN)


class NodeRole(str, enum.Enum):
    """A node's (lease's) role in a buyer's sub-cluster."""

    HEAD = "head"
    WORKER = "worker"


# A node role as plain text, as payloads, rows and tags carry it (compare with NodeRole members; format
# with .value: f"{NodeRole.HEAD}" is "NodeRole.HEAD").
NodeRoleValue = Literal["head", "worker"]  # NodeRole's values: a test checks they agree


class MachineStatus(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"  # missed heartbeats; comes back on the next one
    GONE = "gone"  # the agent left on purpose

    def is_leasable(self) -> bool:
        return self is MachineStatus.ONLINE

    @classmethod
    def effective(cls, stored: str | MachineStatus, last_heartbeat: float | None, *, cutoff: float) -> MachineStatus:
        """The online rule: a machine is online while its agent said so and its last heartbeat is at or
        after cutoff (now - PlatformSettings.offline_after_s); a silent one reads as offline at once,
        before the registry's sweeper persists it. The SQL twin is `actors.db.store.ONLINE_WHERE`."""
        status = cls(stored)
        if status is cls.ONLINE and (last_heartbeat or 0) < cutoff:
            return cls.OFFLINE
        return status


class ClusterStatus(str, enum.Enum):
    PENDING = "pending"  # machines reserved, launch not started
    PROVISIONING = "provisioning"  # the launcher is starting the head; workers are joining
    RUNNING = "running"  # head and every worker joined
    DEGRADED = "degraded"  # running with fewer workers than requested (a machine was lost), with a reason
    TERMINATING = "terminating"
    TERMINATED = "terminated"  # deleted by its owner
    FAILED = "failed"  # with a reason
    EXPIRED = "expired"  # its lifetime ended and it was torn down

    def is_terminal(self) -> bool:
        return self in (ClusterStatus.TERMINATED, ClusterStatus.FAILED, ClusterStatus.EXPIRED)

    def is_active(self) -> bool:
        """Still holds (or is acquiring) machines and must be torn down some day."""
        return self in (
            ClusterStatus.PENDING,
            ClusterStatus.PROVISIONING,
            ClusterStatus.RUNNING,
            ClusterStatus.DEGRADED,
        )

    @classmethod
    def active(cls) -> tuple[ClusterStatus, ...]:
        return tuple(s for s in cls if s.is_active())


class EventKind(str, enum.Enum):
    """What a cluster's event says happened; the API, the CLI and the tests match on these values."""

    CREATED = "created"  # the cluster and its reserved leases were stored
    PROVISIONING = "provisioning"  # the launcher starts the head
    NODE_OPENED = "node_opened"  # a lease opened on its machine
    NODE_CLOSED = "node_closed"
    NODE_RETRY = "node_retry"  # a node that failed to open is opened on another machine
    NODE_RETRY_FAILED = "node_retry_failed"
    LEASE_FAILED = "lease_failed"
    LEASE_CLOSE_FAILED = "lease_close_failed"
    LEASE_LOST = "lease_lost"  # its machine went offline, or its agent stopped holding it
    HEAD_READY = "head_ready"  # the launcher brought the head up
    HEAD_JOINED = "head_joined"  # seen ALIVE in the cluster's GCS
    WORKER_JOINED = "worker_joined"
    JOIN_FAILED = "join_failed"
    COMMAND_FAILED = "command_failed"  # a launcher command failed on a node
    RUNNING = ClusterStatus.RUNNING.value
    DEGRADED = ClusterStatus.DEGRADED.value
    EXPIRY_WARNING = "expiry_warning"
    EXTENDED = "extended"
    TERMINATING = ClusterStatus.TERMINATING.value
    TEARDOWN_WARNING = "teardown_warning"
    LOGS_KEPT = "logs_kept"
    RELEASED = "released"  # every node released
    TERMINATED = ClusterStatus.TERMINATED.value
    FAILED = ClusterStatus.FAILED.value
    EXPIRED = ClusterStatus.EXPIRED.value

    @classmethod
    def joined(cls, role: str) -> EventKind:
        return cls.HEAD_JOINED if role == NodeRole.HEAD else cls.WORKER_JOINED

    @classmethod
    def reached(cls, status: ClusterStatus) -> EventKind:
        """The event of a cluster that reached this status."""
        return cls(status.value)


class LeaseStatus(str, enum.Enum):
    RESERVED = "reserved"  # capacity held for a cluster; no node yet
    OPEN = "open"  # the agent prepared it; the launcher runs commands in it
    CLOSED = "closed"  # released; its processes are gone
    LOST = "lost"  # the machine stopped answering while the lease was held

    def holds_capacity(self) -> bool:
        return self in (LeaseStatus.RESERVED, LeaseStatus.OPEN)


class GpuVerification(str, enum.Enum):
    """Whether a machine's GPUs are as it claims: shown with every machine and offer. The registry sets the
    first status when a machine registers (actors.machines.gpu_verification decides), the ClusterManager's check
    lease (actors.machines.gpu_checks) the outcome."""

    NO_GPUS = "no_gpus"  # a CPU-only machine: nothing to verify
    DECLARED = "declared"  # GPUs declared by hand (`dcluster-agent --gpus`): never verified
    PENDING = "pending"  # detected GPUs, not checked yet (new, or its GPUs changed): no new lease meanwhile
    CHECKING = "checking"  # the check lease holds every GPU of the machine now
    VERIFIED = "verified"  # the check lease saw, through NVML in the sandbox, the GPUs the machine claims
    MISMATCH = "mismatch"  # the check lease saw something else: what differs is kept with it
    UNVERIFIED = "unverified"  # the check could not run or give an answer (why is kept): as good as declared

    def holds_placement(self) -> bool:
        """No buyer lease is placed on the machine: its check is due or running (the check lease holds its GPUs)."""
        return self in (GpuVerification.PENDING, GpuVerification.CHECKING)

    @classmethod
    def placement_holders(cls) -> tuple[GpuVerification, ...]:
        return tuple(s for s in cls if s.holds_placement())


class StrictModel(BaseModel):
    """The base of every model of ours: unknown fields are an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class GpuInfo(StrictModel):
    index: Annotated[int, Field(ge=0, le=63, description="Device index on the machine")]
    model: Annotated[
        str, Field(pattern=ids.GPU_MODEL_PATTERN, description="Marketing name, e.g. 'NVIDIA H100 80GB HBM3'")
    ]
    memory_mb: Annotated[int, Field(ge=0, le=10_000_000, description="Total device memory in MiB")]
    uuid: Annotated[str | None, Field(default=None, max_length=128)] = None


# Where an agent runs leases (`dcluster-agent --runtime`): a container each, a bubblewrap sandbox each, or
# (none) as the agent's own user, which the provider must accept with UNSANDBOXED_FLAG.
SandboxRuntime = Literal["docker", "bwrap", "none"]
SANDBOX_RUNTIMES: tuple[str, ...] = get_args(SandboxRuntime)
UNSANDBOXED = "none"
UNSANDBOXED_FLAG = "--i-understand-leases-are-unsandboxed"


def python_minor(version: str) -> str:
    """'3.11.4' → '3.11' (Ray needs every node of a cluster on the same Python minor version); '' unknown."""
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else ""


class LeaseRuntime(NamedTuple):
    """The Ray version and Python minor version a lease runs on a machine: every node of a cluster runs the same
    (a Ray node joins a cluster of its own Ray version and Python minor version only). '' where unknown."""

    ray: str
    python: str  # major.minor

    def __str__(self) -> str:
        return f"Ray {self.ray or '(unknown)'} on Python {self.python or '(unknown)'}"

    def newest_first(self) -> tuple[tuple[int, ...], ...]:
        """A sort key: newer Ray first, then newer Python (unknown parts last)."""
        return tuple(tuple(-int(p) if p.isdigit() else 1 for p in v.split(".")) for v in self)


class MachineSpec(StrictModel):
    """What the agent found (or was told) about its machine."""

    hostname: Annotated[str, Field(min_length=1, max_length=255)]
    os: Annotated[str, Field(max_length=128, description="e.g. 'Linux 6.1'")] = ""
    arch: Annotated[str, Field(max_length=32, description="e.g. 'x86_64'")] = ""
    cpus: Annotated[int, Field(ge=1, le=4096, description="Logical CPU count")]
    memory_mb: Annotated[int, Field(ge=1, le=1_000_000_000, description="Total RAM in MiB")]
    gpus: Annotated[list[GpuInfo], Field(max_length=64)] = []
    gpus_declared: Annotated[bool, Field(description="True when GPUs were declared with --gpus, not detected")] = False
    driver_version: Annotated[str | None, Field(max_length=64)] = None
    cuda_version: Annotated[str | None, Field(max_length=32)] = None
    ray_version: Annotated[
        str, Field(max_length=32, description="The Ray a lease runs here (the agent's, or its docker image's)")
    ] = ""
    python_version: Annotated[
        str, Field(max_length=32, description="The Python a lease runs here (the agent's, or its docker image's)")
    ] = ""
    sandbox: Annotated[
        SandboxRuntime,
        Field(description="Where leases run: a container, a bubblewrap sandbox, or (none) as the agent's own user"),
    ] = "none"

    @property
    def sandboxed(self) -> bool:
        return self.sandbox != UNSANDBOXED

    @property
    def gpu_model(self) -> str | None:
        """The machine's GPU model, or None for a CPU-only machine."""
        return self.gpus[0].model if self.gpus else None

    @property
    def lease_runtime(self) -> LeaseRuntime:
        return LeaseRuntime(self.ray_version, python_minor(self.python_version))


class MachineUsage(StrictModel):
    """Current use, carried by each heartbeat."""

    cpu_percent: Annotated[float, Field(ge=0, le=100)] = 0.0
    memory_used_mb: Annotated[int, Field(ge=0, le=1_000_000_000)] = 0
    gpu_utilization: Annotated[list[Annotated[float, Field(ge=0, le=100)]], Field(max_length=64)] = []
    active_leases: Annotated[int, Field(ge=0, le=1024)] = 0
