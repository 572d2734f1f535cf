"""A lease's place on this machine: its record (lease.json), dirs, logs and owner tag, and stopping a
command's process group. LeaseRunner (leases.py) uses these; the layout is described there."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dcl_core import protocol
from dcl_core import ray_ports as ray_ports_mod

logger = logging.getLogger(__name__)

RECORD_FILE = "lease.json"
TOKEN_FILE = "ray_auth_token"
TEMP_DIR_PREFIX = "/tmp/dcl-"
OWNER_TAG_PREFIX = "dcl-lease-"

# The agent's own Ray settings must never leak into a buyer's node.
TERM_GRACE_S = 2.0  # a timed-out command's process group: SIGTERM, then SIGKILL after this



class LeaseError(Exception):
    """Root of the errors LeaseRunner raises; the agent reports them as a failed WorkResult."""

    def __init__(self, message: str, *, lease_id: str | None = None):
        super().__init__(message)
        self.lease_id = lease_id


def owner_tag(lease_id: str) -> str:
    return OWNER_TAG_PREFIX + lease_id


def temp_dir_for(lease_id: str) -> Path:
    return Path(TEMP_DIR_PREFIX + lease_id)


@dataclasses.dataclass
class Lease:
    """One open lease: the record persisted as lease.json plus runtime-only fields."""

    lease_id: str
    cluster_id: str
    role: str
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
    seq: int = 0  # numbers the command logs
    closing: bool = False  # set by close(): no command starts any more

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def token_path(self) -> Path:
        return self.dir / TOKEN_FILE

    @property
    def tag(self) -> str:
        return owner_tag(self.lease_id)

    def record(self) -> dict:
        return {"lease_id": self.lease_id, "cluster_id": self.cluster_id, "role": self.role,
                "gpu_indices": self.gpu_indices, "resources": self.resources, "labels": self.labels,
                "head_gcs_port": self.head_gcs_port, "ports": self.ports.to_dict(), "node_ip": self.node_ip,
                "temp_dir": str(self.temp_dir), "owner_tag": self.tag, "machine_id": self.machine_id,
                "opened_at": self.opened_at, "agent_pid": os.getpid()}

    def opened(self) -> protocol.LeaseOpened:
        return protocol.LeaseOpened(ports=self.ports.to_dict(), node_ip=self.node_ip)


def make_temp_dir(path: Path) -> None:
    """/tmp is shared: create ours 0700, or accept an existing one only if it is our own real directory."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if path.is_symlink() or not path.is_dir() or st.st_uid != os.getuid():
            raise LeaseError(f"{path} exists and is not a directory of this user; remove it and retry")
    os.chmod(path, 0o700)


def remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def read_tail(path: Path, limit: int = protocol.MAX_OUTPUT_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except FileNotFoundError:
        return ""
    return data.decode(errors="replace")


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128+N, as shells say


def kill_group(proc: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the command's process group, SIGKILL it after grace_s, reap the command.

    The command stays unreaped (a zombie at worst) until after the SIGKILL, so its PID, which
    is the group's id, cannot be reused by a stranger in between.
    """
    pgid = proc.pid  # start_new_session: the command leads its own group

    def killpg(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    killpg(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        except ChildProcessError:
            break
        time.sleep(0.02)
    killpg(signal.SIGKILL)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        logger.warning("pid %d survived SIGKILL", proc.pid)
