"""The contract between the platform and agents for node leases: work-item kinds, payloads, results.

Work items reach the agent through its long poll (`GET /v1/machines/{id}/work`) as
`{"id", "kind", "payload"}`; the agent answers each with `POST /v1/machines/{id}/results/{item id}`
and a `WorkResult` body. Items of one lease are handled in order; leases run in parallel.
"""

from __future__ import annotations

import signal
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from dcl_core import domain, ids, node_addresses

# The version of this contract. Agents send it in PROTOCOL_HEADER with every call; the platform answers it in
# /healthz and refuses an agent that announces another one on the machine routes (426, naming both versions).
# Raise it with any change an agent of the other version would misread.
PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "DCluster-Protocol"
# Agents made before the header spoke this version: a call without the header is taken as speaking it.
UNANNOUNCED_PROTOCOL = 1
# Sent to a running agent to make it close every lease and leave the platform (`dcluster-agent leave`, a local
# platform's `down`); SIGTERM only stops it for a restart, its leases running on (worker/agent/stopping.py).
AGENT_LEAVE_SIGNAL = signal.SIGUSR1


def mismatch_message(*, agent: object, platform: object) -> str:
    return (
        f"this agent speaks protocol {agent} and the platform protocol {platform}: run the agent release that "
        f"speaks protocol {platform} (where the agent is the older one: pip install --upgrade "
        f"'decentralized-clusters[agent]', then start it again)"
    )


def protocol_refusal(header: str | None) -> str | None:
    """Why a call announcing `header` (the PROTOCOL_HEADER value, None when absent) is refused; None: it is not."""
    if header is None:
        announced: object = UNANNOUNCED_PROTOCOL
    else:
        announced = header.strip()[:16] or "(empty)"
        if announced == str(PROTOCOL_VERSION):
            return None
    if announced == PROTOCOL_VERSION:
        return None
    return mismatch_message(agent=announced, platform=PROTOCOL_VERSION)


# While the platform is unreachable an agent retries at least this often (dcluster.Backoff's cap):
# the platform gives agents this long, after it could not hear them, before it calls a machine silent.
AGENT_MAX_RETRY_S = 30.0
# The agents' long poll for work: the most the API holds one (the registry's max_long_poll_s may lower it),
# and how long an agent asks it to wait.
MAX_LONG_POLL_S = 30.0
LONG_POLL_S = 20.0

# Opening a node of a cluster: each lease open waits this long for its agent, and a node is tried this often in all,
# each time on another machine where one fits (actors.clusters.lease_opener); the node provider's create waits for
# all of them (worker.node_provider.market_provider).
LEASE_OPEN_TIMEOUT_S = 30.0
NODE_OPEN_ATTEMPTS = 3
NODE_OPEN_BUDGET_S = NODE_OPEN_ATTEMPTS * LEASE_OPEN_TIMEOUT_S

LEASE_OPEN = "lease_open"
LEASE_EXEC = "lease_exec"
LEASE_CLOSE = "lease_close"

MAX_OUTPUT_BYTES = 64 * 1024
LeaseId = Annotated[str, Field(pattern=ids.LEASE_ID_PATTERN)]
Strict = domain.StrictModel


# What a lease is for: a node of a buyer's sub-cluster, or the platform's own GPU check of the machine
# (actors.machines.gpu_checks: every GPU, one command, never billed; it belongs to no cluster).
LeasePurpose = Literal["node", "gpu_check"]
NODE_LEASE: LeasePurpose = "node"
GPU_CHECK_LEASE: LeasePurpose = "gpu_check"


class LeaseOpen(Strict):
    """Prepare a lease: its directory, HOME, ports, auth token; nothing runs yet."""

    lease_id: LeaseId
    purpose: LeasePurpose = NODE_LEASE
    cluster_id: Annotated[str, Field(pattern=ids.CLUSTER_ID_PATTERN)] | None = None  # a node lease's cluster
    role: domain.NodeRoleValue | None = None  # a node lease's role
    gpu_indices: list[int] = []
    # Merged into RAY_OVERRIDE_RESOURCES / RAY_OVERRIDE_LABELS of every command of the lease.
    resources: dict[str, float] = {}
    labels: dict[str, str] = {}
    ray_auth_token: Annotated[str, Field(min_length=16, max_length=256)]
    head_gcs_port: int | None = None  # workers: where the head's GCS listens (exported as DCL_HEAD_GCS_PORT)
    cpus: Annotated[int, Field(ge=1, le=4096)] | None = None  # the lease's CPUs: its sandbox's CPU limit
    image: Annotated[str, Field(max_length=256)] | None = None  # the cluster's container image (docker runtime)

    @model_validator(mode="after")
    def _node_or_check(self) -> LeaseOpen:
        if self.purpose == NODE_LEASE and (self.cluster_id is None or self.role is None):
            raise ValueError("a node lease needs its cluster_id and role")
        if self.purpose == GPU_CHECK_LEASE and (self.cluster_id is not None or self.role is not None):
            raise ValueError("a GPU check lease belongs to no cluster: send neither cluster_id nor role")
        return self


class LeaseOpened(Strict):
    """WorkResult.data of a LEASE_OPEN."""

    ports: dict[str, int]  # RayPorts.to_dict()
    node_ip: str  # the platform connects here (dashboard, metrics): a literal unicast IP only

    @field_validator("node_ip")
    @classmethod
    def _unicast(cls, value: str) -> str:
        return node_addresses.unicast_ip(value)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: dict[str, int]) -> dict[str, int]:
        return {name: node_addresses.port(number) for name, number in value.items()}


MAX_COMMAND_TIMEOUT_S = 3600.0


class Exec(Strict):
    """Run a launcher command on a node (op=run), or write a file there (op=put_file): the body of the
    node provider's `POST .../nodes/{id}/exec`; the platform forwards it to the agent as a LeaseExec."""

    op: Literal["run", "put_file"]
    cmd: Annotated[str, Field(max_length=64 * 1024)] = ""
    env: Annotated[
        dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=64 * 1024)]], Field(max_length=256)
    ] = {}
    timeout_s: Annotated[float, Field(gt=0, le=MAX_COMMAND_TIMEOUT_S)] = 120.0
    path: Annotated[str, Field(max_length=1024)] = ""  # put_file: '~' is the lease's HOME
    content_b64: Annotated[str, Field(max_length=700 * 1024)] = ""


class LeaseExec(Exec):
    """An Exec addressed to one lease (work item of kind LEASE_EXEC)."""

    lease_id: LeaseId


class LeaseClose(Strict):
    """Stop every process of the lease (and only those), then remove its files."""

    lease_id: LeaseId
    grace_s: Annotated[float, Field(ge=0, le=60)] = 2.0


# What the platform sends an agent: a work item's payload, of the item's kind.
WorkPayload = LeaseOpen | LeaseExec | LeaseClose


class WorkResult(Strict):
    ok: bool
    exit_code: int | None = None
    output: Annotated[str, Field(max_length=MAX_OUTPUT_BYTES * 2)] = ""
    data: dict[str, Any] = {}


# Environment variables an agent sets for every command of a lease (the launcher templates use them).
ENV_PORT_FLAGS = "DCL_RAY_PORT_FLAGS"  # `ray start`: every port, --temp-dir and --node-ip-address of this node
ENV_HEAD_GCS_PORT = "DCL_HEAD_GCS_PORT"
ENV_LEASE_ID = "DCL_LEASE_ID"

# Ray node label the agent sets on every node of a lease (with the platform's dcluster.io/* labels):
# the platform maps the sub-cluster's GCS nodes to leases by it (actors.clusters.node_observer).
LEASE_LABEL = "dcluster.io/lease"

# The Serve deployment of the platform API (serve_app.app); the CLI spreads its replicas on several nodes.
API_DEPLOYMENT = "api"

# Ray node label of a platform node added with `dcluster up --join` (not the head): on PostgreSQL the control-plane
# actors prefer such a node, so a lost head does not take them with it (actors.actor_classes).
PLATFORM_MEMBER_LABEL = "dcluster.io/platform-member"
PLATFORM_MEMBER_VALUE = "true"


# --- the GPU check (a lease of purpose GPU_CHECK_LEASE runs one command: worker.agent.gpu_check) ----------

GPU_CHECK_COMMAND = "python -m worker.agent.gpu_check"
GPU_CHECK_MARKER = "DCL_GPU_CHECK "  # the line of the check's output that carries its GpuCheckReport (JSON)
# Test-only: a fake NVML's description (JSON) the agent passes into its check leases when it was started with
# `--test-fake-nvml`; the report then says nvml="fake", and only a platform with
# gpu_check_accepts_fake_nvml (test platforms) counts it.
ENV_TEST_FAKE_NVML = "DCL_TEST_FAKE_NVML"
NvmlSource = Literal["nvml", "fake", "unavailable"]


class GpuBenchmark(Strict):
    """A small matmul timed inside the check lease (informative: it is shown, not judged)."""

    backend: Literal["torch", "cupy", "numpy", "python"]
    device: Annotated[str, Field(max_length=64, description="'cpu', or 'gpu:<index in the lease>'")]
    size: Annotated[int, Field(ge=0, le=1_000_000, description="n of the n x n matmul")] = 0
    seconds: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    gflops: Annotated[float, Field(ge=0, le=1e9)] = 0.0
    error: Annotated[str, Field(max_length=500)] | None = None


class GpuCheckReport(Strict):
    """What the check lease saw of the machine's GPUs, from inside its sandbox."""

    nvml: NvmlSource
    uid: int | None = None  # the user the check ran as: in a sandbox, the lease's own uid
    nvml_error: Annotated[str, Field(max_length=500)] | None = None
    gpus: Annotated[list[domain.GpuInfo], Field(max_length=64)] = []
    driver_version: Annotated[str, Field(max_length=64)] | None = None
    cuda_version: Annotated[str, Field(max_length=32)] | None = None
    benchmarks: Annotated[list[GpuBenchmark], Field(max_length=70)] = []
