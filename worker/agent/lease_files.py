"""A lease's place on this machine: its record (lease.json), dirs, logs, owner tag and the lease user's
/etc files. LeaseRunner (leases.py) uses these; the layout is described there."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

from dcl_core import protocol, secret_files
from dcl_core import ray_ports as ray_ports_mod
from worker.agent.sandbox import base as sandbox_base

logger = logging.getLogger(__name__)

RECORD_FILE = "lease.json"
LOGS_DIR = "logs"  # in the lease's dir: the output of each command, writable inside
HOME_DIR = "home"
TOKEN_FILE = secret_files.RAY_AUTH_TOKEN_FILE
TEMP_DIR_PREFIX = "/tmp/dcl-"
OWNER_TAG_PREFIX = "dcl-lease-"
LEASE_USER = "dcluster-lease"  # the lease's user's name inside (Ray and getpass want one)
TERM_GRACE_S = 2.0  # a timed-out command's process group: SIGTERM, then SIGKILL after this


class LeaseError(Exception):
    """Root of the errors LeaseRunner raises; the agent reports them as a failed WorkResult."""

    def __init__(self, message: str, *, lease_id: str | None = None):
        super().__init__(message)
        self.lease_id = lease_id


class RunnerClosed(LeaseError):
    """The agent is shutting down; no new lease or command starts."""


def owner_tag(lease_id: str) -> str:
    return OWNER_TAG_PREFIX + lease_id


def temp_dir_for(lease_id: str) -> Path:
    return Path(TEMP_DIR_PREFIX + lease_id)


@dataclasses.dataclass
class Lease:
    """One open lease: the record persisted as lease.json plus runtime-only fields."""

    lease_id: str
    cluster_id: str | None  # None: the platform's GPU check (protocol.GPU_CHECK_LEASE), of no cluster
    role: str | None
    gpu_indices: list[int]
    resources: dict[str, float]
    labels: dict[str, str]
    head_gcs_port: int | None
    ports: ray_ports_mod.RayPorts
    node_ip: str
    dir: Path
    temp_dir: Path
    machine_id: str | None
    opened_at: float
    purpose: str = protocol.NODE_LEASE
    uid: int | None = None  # the lease's own user (None: the agent's, runtime none)
    gid: int | None = None
    seq: int = 0  # numbers the command logs
    closing: bool = False  # set by close(): no command starts any more
    sandbox: sandbox_base.Sandbox | None = None
    # Held while a command starts and while close() marks the lease closing: a slow start never holds
    # the runner's lock, which the heartbeat needs.
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def home(self) -> Path:
        return self.dir / HOME_DIR

    @property
    def token_path(self) -> Path:
        return self.dir / TOKEN_FILE

    @property
    def tag(self) -> str:
        return owner_tag(self.lease_id)

    @property
    def logs(self) -> Path:
        return self.dir / LOGS_DIR

    def record(self) -> dict:
        return {
            "lease_id": self.lease_id,
            "purpose": self.purpose,
            "cluster_id": self.cluster_id,
            "role": self.role,
            "gpu_indices": self.gpu_indices,
            "resources": self.resources,
            "labels": self.labels,
            "head_gcs_port": self.head_gcs_port,
            "ports": self.ports.to_dict(),
            "node_ip": self.node_ip,
            "temp_dir": str(self.temp_dir),
            "owner_tag": self.tag,
            "machine_id": self.machine_id,
            "opened_at": self.opened_at,
            "agent_pid": os.getpid(),
            "uid": self.uid,
        }

    def opened(self) -> protocol.LeaseOpened:
        return protocol.LeaseOpened(ports=self.ports.to_dict(), node_ip=self.node_ip)


def user_files(lease: Lease) -> tuple[tuple[Path, str], ...]:
    """/etc/passwd and /etc/group inside the sandbox: the lease's user alone (no account of the machine's)."""
    if lease.uid is None:
        return ()
    etc = lease.dir / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    passwd, group = etc / "passwd", etc / "group"
    passwd.write_text(
        f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
        f"{LEASE_USER}:x:{lease.uid}:{lease.gid}:lease {lease.lease_id}:{lease.home}:/bin/bash\n"
    )
    group.write_text(f"root:x:0:\n{LEASE_USER}:x:{lease.gid}:\n")
    for path in (passwd, group):
        os.chmod(path, 0o644)
    return ((passwd, "passwd"), (group, "group"))


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128+N, as shells say
