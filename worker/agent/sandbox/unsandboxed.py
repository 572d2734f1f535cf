"""Runtime none: a lease's processes run as the agent's user, each command in a process group of its own.

They are never the agent's to end by dying (each command leads a session of its own), so a lease
outlives an agent restart: it is its owner tag, reattached as long as the machine has not rebooted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcl_core import domain, secret_files
from worker import procs
from worker.agent.sandbox import base

logger = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot of the machine: a lease recorded in another one has no process left."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class Unsandboxed(base.Sandbox):
    """Runtime none: the lease's processes run as the agent's user, tracked by their DCLUSTER_OWNER tag."""

    sandboxed = False

    def __init__(self, spec: base.SandboxSpec):
        self.spec = spec

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path) -> base.Process:
        return _GroupProcess(
            procs.spawn(list(argv), env=env, cwd=cwd, log_path=log_path, owner_tag=self.spec.owner_tag)
        )

    def put_file(self, path: Path, content: bytes) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret_files.write_secret_file(path, content)

    def close(self, grace_s: float) -> procs.StopSummary:
        return procs.stop_owned(self.spec.owner_tag, grace_s=grace_s)

    def saved(self) -> dict[str, Any]:
        return {"link": "owner-tag", "owner_tag": self.spec.owner_tag, "boot_id": boot_id()}


class UnsandboxedRuntime(base.Runtime):
    name = domain.UNSANDBOXED
    sandboxed = False

    def create(self, spec: base.SandboxSpec) -> base.Sandbox:
        return Unsandboxed(spec)

    def reattach(self, lease_id: str, control_dir: Path, saved: dict[str, Any]) -> base.Sandbox | None:
        tag = saved.get("owner_tag")
        if saved.get("link") != "owner-tag" or not isinstance(tag, str) or not tag.endswith(lease_id):
            return None
        if not saved.get("boot_id") or saved.get("boot_id") != boot_id():
            return None  # the machine rebooted since: nothing of the lease runs
        return Unsandboxed(base.SandboxSpec(lease_id=lease_id, owner_tag=tag, uid=None, gid=None, writable=()))

    def cuda_visible_devices(self, gpu_indices: Sequence[int]) -> str:
        return ",".join(str(i) for i in gpu_indices)  # every GPU of the machine is visible: name ours


class _GroupProcess:
    """A Popen that leads its own process group (procs.spawn)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def kill(self, grace_s: float) -> None:
        """SIGTERM the group, SIGKILL after grace_s; the leader stays unreaped until then, so its
        PID (the group's id) cannot be reused by a stranger in between."""
        pgid = self.proc.pid

        def killpg(sig: int) -> None:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        killpg(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                if os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
            except ChildProcessError:
                break
            time.sleep(0.02)
        killpg(signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d survived SIGKILL", pgid)
