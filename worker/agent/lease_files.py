"""A lease's place on this machine: its record (lease.json), dirs, logs, owner tag and the lease user's
/etc files. LeaseRunner (leases.py) uses these; the layout is described there."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

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
        """lease.json: what a restarted agent rebuilds the lease from (from_record), its sandbox's link included."""
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
            "gid": self.gid,
            "sandbox": self.sandbox.saved() if self.sandbox is not None else {},
        }

    def opened(self) -> protocol.LeaseOpened:
        return protocol.LeaseOpened(ports=self.ports.to_dict(), node_ip=self.node_ip)

    def save(self) -> None:
        """Write lease.json (0600, atomically: a crash leaves the old record or the new one, never half)."""
        secret_files.write_secret_file(self.dir / RECORD_FILE, json.dumps(self.record(), indent=2).encode())

    @classmethod
    def from_record(cls, lease_dir: Path, record: Any) -> Lease:
        """The lease a record describes (its sandbox not reached yet); ValueError when it is not one of ours."""
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        lease_id = record.get("lease_id")
        if lease_id != lease_dir.name or record.get("owner_tag") != owner_tag(lease_dir.name):
            raise ValueError(f"it describes {lease_id!r}, not the lease of its dir")
        if record.get("temp_dir") != str(temp_dir_for(lease_dir.name)):
            raise ValueError("its temp dir is not the lease's")
        try:
            lease = cls(
                lease_id=lease_id,
                purpose=str(record["purpose"]),
                cluster_id=_optional(record["cluster_id"], str),
                role=_optional(record["role"], str),
                gpu_indices=[int(i) for i in record["gpu_indices"]],
                resources={str(k): float(v) for k, v in dict(record["resources"]).items()},
                labels={str(k): str(v) for k, v in dict(record["labels"]).items()},
                head_gcs_port=_optional(record["head_gcs_port"], int),
                ports=ray_ports_mod.RayPorts.from_dict(record["ports"]),
                node_ip=str(record["node_ip"]),
                dir=lease_dir,
                temp_dir=temp_dir_for(lease_id),
                machine_id=_optional(record["machine_id"], str),
                opened_at=float(record["opened_at"]),
                uid=_optional(record["uid"], int),
                gid=_optional(record.get("gid", record["uid"]), int),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"unreadable field ({type(exc).__name__}: {exc})") from None
        if not isinstance(record.get("sandbox"), dict):
            raise ValueError("no sandbox link")
        lease.seq = _last_seq(lease.logs)  # the next command's log follows the earlier ones
        return lease


def read_record(lease_dir: Path) -> Any:
    """The parsed lease.json of a lease dir; ValueError when it is missing, unreadable, not a plain 0600 file of
    the agent's own user (never followed through a link), or not JSON."""
    try:
        fd = os.open(lease_dir / RECORD_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"no readable {RECORD_FILE} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise ValueError(f"{RECORD_FILE} is not a private file of the agent's user")
        try:
            return json.loads(f.read(1 << 20))
        except ValueError:
            raise ValueError(f"{RECORD_FILE} is not JSON") from None


def _last_seq(logs: Path) -> int:
    try:
        names = os.listdir(logs)
    except OSError:
        return 0
    return max((int(n[:4]) for n in names if n[:4].isdigit()), default=0)


def _optional(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


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
