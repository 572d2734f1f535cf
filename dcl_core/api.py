"""Request and response models of the HTTP API (Create / Public variants per resource); the client shares them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from dcl_core import domain, ids, protocol, quota_limits

Strict = domain.StrictModel

# Where the platform publishes its TLS certificate authority (PEM), for clients to check against a fingerprint.
TLS_CA_PATH = "/v1/tls/ca.pem"


# Bounds of numbers that reach SQLite (a signed 64-bit INTEGER) or date arithmetic.
MAX_SQL_INT = 2**63 - 1
MAX_EPOCH_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z


# --- accounts ---------------------------------------------------------------------------


# bcrypt reads only the first 72 bytes: longer passwords would silently share a hash.
MAX_PASSWORD_BYTES = 72


def _fits_bcrypt(password: str) -> str:
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    return password


Username = Annotated[str, Field(pattern=ids.USERNAME_PATTERN, description="3-64 of [a-z0-9_.-]")]
Password = Annotated[str, Field(min_length=8, max_length=72, description="8 to 72 bytes"), AfterValidator(_fits_bcrypt)]


class AccountCreate(Strict):
    username: Username
    password: Password
    role: Annotated[domain.Role, Field(description="provider or buyer; admin only by an admin")] = domain.Role.BUYER


class SeedRegister(Strict):
    """The seed's POST /register body: always a provider account."""

    username: Username
    password: Password


class AccountPublic(Strict):
    id: int
    username: str
    role: domain.Role
    created_at: float


QuotaUpdate = quota_limits.QuotaOverrides


class QuotaUsed(Strict):
    clusters: int = Field(description="Live clusters")
    gpus: int = Field(description="GPUs held by live clusters")
    cpus: int = Field(description="CPUs held by live clusters (heads included)")
    gpu_hours: float = Field(
        description="GPU-hours metered in the period plus reserved by live clusters until they expire"
    )


class QuotaPublic(Strict):
    account_id: int
    username: str
    limits: quota_limits.QuotaLimits = Field(
        description="What applies: the overrides where set, else the platform's defaults"
    )
    overrides: quota_limits.QuotaOverrides = Field(description="What an admin set for this account (null: the default)")
    used: QuotaUsed


class Token(Strict):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


# --- machines ---------------------------------------------------------------------------


class MachineRegister(Strict):
    machine_key: Annotated[
        str,
        Field(
            pattern=ids.MACHINE_KEY_PATTERN,
            description="Stable id the agent keeps on disk; re-registering with it returns the same machine",
        ),
    ]
    name: Annotated[str, Field(pattern=ids.MACHINE_NAME_PATTERN, description="Display name")]
    spec: domain.MachineSpec
    price_per_gpu_hour: Annotated[float, Field(ge=0, le=10_000, description="USD per GPU-hour")] = 0.0
    price_per_cpu_hour: Annotated[float, Field(ge=0, le=10_000, description="USD per CPU-hour (CPU-only leases)")] = 0.0


class Heartbeat(Strict):
    usage: domain.MachineUsage = domain.MachineUsage()
    leases: Annotated[
        list[Annotated[str, Field(pattern=ids.LEASE_ID_PATTERN)]],
        Field(max_length=1024, description="Leases the agent holds; the answer names those the platform ended"),
    ] = []


class GpuVerificationPublic(Strict):
    """Whether the machine's GPUs are as it claims (see the README's "GPUs: declared or verified")."""

    status: domain.GpuVerification = Field(
        description="no_gpus, declared (--gpus: never verified), pending, checking, verified, mismatch, unverified"
    )
    checked_at: float | None = Field(default=None, description="When the last check lease ended")
    reason: str | None = Field(default=None, description="Why it is not verified (mismatch: what differs, in short)")
    differences: list[str] = Field(default=[], description="mismatch: each claim the check lease did not see")
    nvml: protocol.NvmlSource | None = Field(
        default=None, description="What the check read: NVML, a test fake, or nothing"
    )
    uid: int | None = Field(default=None, description="The user the check ran as (in a sandbox: the lease's own uid)")
    seen: list[domain.GpuInfo] = Field(default=[], description="The GPUs NVML showed inside the check lease")
    driver_version: str | None = None
    benchmarks: list[protocol.GpuBenchmark] = Field(default=[], description="Matmul timings inside the check lease")


class MachinePublic(Strict):
    id: str
    provider_id: int
    provider: str
    name: str
    status: domain.MachineStatus
    spec: domain.MachineSpec
    price_per_gpu_hour: float
    price_per_cpu_hour: float
    registered_at: float
    last_heartbeat: float | None
    usage: domain.MachineUsage | None
    reliability: float = Field(
        description="0-1: share of its time online since it registered, times the share of "
        "its nodes that ended well rather than lost (priors: an hour online, "
        "9 of 10 nodes)"
    )
    gpu_verification: GpuVerificationPublic


class HeartbeatAck(Strict):
    status: domain.MachineStatus
    heartbeat_interval_s: float
    stale_leases: list[str] = Field(
        default=[], description="Leases the agent holds that no live cluster owns: close them"
    )


class MachineRegistered(MachinePublic):
    heartbeat_interval_s: float
    agent_key: str | None = Field(
        default=None,
        description="Set when the provider's sign-in enrolled the machine: "
        "the key its agent uses from now on. Shown once; keep it 0600.",
    )


class ClusterLogFile(Strict):
    lease_id: str = Field(description="The node it came from")
    role: str
    machine_id: str
    name: str = Field(description="ray/<file of Ray's session logs> or commands/<the platform's commands' output>")
    bytes: int = Field(description="Its size on the node")
    kept_bytes: int = Field(description="What the platform kept: the file's tail")
    truncated: bool
    shipped_at: float


class MachineKeyPublic(Strict):
    id: str
    machine_id: str
    machine_name: str
    created_at: float
    revoked_at: float | None
    active: bool


class WorkItem(Strict):
    id: str
    kind: str
    payload: dict[str, Any]


class WorkBatch(Strict):
    items: list[WorkItem]


WorkResult = protocol.WorkResult


class Offer(Strict):
    gpu_model: str | None = Field(description="None groups the CPU-only machines")
    sandboxed: bool = Field(
        description="False: these machines run leases unsandboxed, as their agent's own user "
        "(`dcluster-agent --runtime none`)"
    )
    ray_version: str = Field(description="The Ray version a lease runs on these machines ('' unknown)")
    python_version: str = Field(description="The Python minor version a lease runs on them, e.g. '3.11'")
    launchable: bool = Field(
        description="Whether the platform launches clusters of this Ray version (ClusterSpec.ray_version): "
        "a cluster's nodes all run its Ray version and one Python minor version"
    )
    machines: int
    gpus: int
    cpus: int
    memory_mb: int
    price_per_gpu_hour_min: float
    price_per_gpu_hour_max: float
    price_per_cpu_hour_min: float
    price_per_cpu_hour_max: float
    reliability_min: float = Field(description="The least reliable machine of the group (see MachinePublic)")
    reliability_max: float
    verified_gpus: int = Field(description="GPUs on machines whose GPUs a check lease verified")
    gpu_verification: dict[domain.GpuVerification, int] = Field(
        description="Machines of the group per GPU verification status (see MachinePublic.gpu_verification)"
    )


class Message(Strict):
    message: str


# --- clusters ---------------------------------------------------------------------------


class NodePublic(Strict):
    id: str
    role: str
    status: str
    node_type: str | None
    tags: dict[str, str]
    node_ip: str | None
    machine_id: str
    gpus: int
    cpus: int
    joined: bool
    joined_at: float | None
    left_at: float | None


class ClusterPublic(Strict):
    id: str
    name: str
    status: domain.ClusterStatus
    reason: str | None
    num_workers: int
    gpus_per_worker: int
    gpu_model: str | None
    cpus_per_worker: int
    duration_s: int
    backend: str
    max_price_per_gpu_hour: float | None = None
    max_price_per_cpu_hour: float | None = None
    ray_version: str | None = Field(None, description="The Ray version every node runs (None: set before it was kept)")
    python_version: str | None = Field(
        None, description="The Python minor version every node runs (None: not placed on machines yet)"
    )
    created_at: float
    expires_at: float
    running_at: float | None
    ended_at: float | None
    workers_joined: int
    head_node_ip: str | None
    nodes: list[NodePublic]


class ClusterConnection(Strict):
    dashboard_url: str
    job_submission_url: str
    ray_client_address: str
    gcs_address: str
    ray_auth_token: str
    dashboard_proxy_url: Annotated[
        str,
        Field(
            description=(
                "The head's dashboard through the platform (GET only): send your platform token as "
                "`Authorization: Bearer`, the platform adds the cluster's Ray token. Directly at dashboard_url, send "
                "the Ray token instead (`Authorization: Bearer <ray_auth_token>`, or sign in once in the dashboard)"
            )
        ),
    ]
    metrics_proxy_url: Annotated[
        str,
        Field(
            description=(
                "The head's Ray metrics in Prometheus' format, with your platform token; ?node=<node id> for a worker's"
            )
        ),
    ]
    env: dict[str, str]
    ray_job_submit: str


class ClusterEvent(Strict):
    id: int
    ts: float
    kind: str
    message: str


class ClusterExtend(Strict):
    duration_s: Annotated[int, Field(ge=1, le=90 * 86_400, description="Seconds added to the lifetime")]


class SeedDeploy(Strict):
    """The seed's POST /deploy_cluster body: duration in minutes (its example: 60 is an hour)."""

    num_workers: Annotated[int, Field(ge=1, le=64)]
    duration: Annotated[int, Field(ge=1, le=10080, description="Minutes")]


class SeedClusterInfo(Strict):
    cluster_id: str
    status: str
    head_node_ip: str | None
    expiration_time: float
    creation_time: float
    num_workers: int


# --- node provider (cluster-scoped credential) --------------------------------------------

Tags = Annotated[
    dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=1024)]], Field(max_length=64)
]


class NodesCreate(Strict):
    role: domain.NodeRoleValue
    node_type: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    tags: Tags = {}
    count: Annotated[int, Field(ge=1, le=64)] = 1


class NodeTags(Strict):
    tags: Tags


class NodeExec(protocol.Exec):
    """The node route's exec body: protocol.Exec itself, named as the API has always named it."""
