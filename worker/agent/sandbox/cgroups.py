"""One cgroup per lease (cgroup v1 memory, pids, cpu, freezer): its limits, and every process in it found and killed.

Where a controller is not mounted or not writable (no root, cgroup v2 without delegation), the
lease runs without it and `available()` says so; the pid namespace still ends every process
of a bwrap sandbox when its first process dies.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
PARENT = "dcluster"
CONTROLLERS = ("memory", "pids", "cpu", "freezer")
CPU_PERIOD_US = 100_000
# cgroup v1 weighs a child group like ONE task of its parent: all leases together would get 1/61 of
# the machine beside 60 busy processes. The leases' parent weighs like one busy process per core
# of the machine, each lease weighs its CPUs within it, and its quota caps it at them. (Weighing
# the parent as much as cgroups allow starved the agent's own heartbeats on a busy machine.)
PARENT_SHARES = 1024 * (os.cpu_count() or 1)
SHARES_PER_CPU = 1024


def weigh_parent(root: Path = ROOT) -> Path | None:
    """Make the leases' parent cpu cgroup and give it its weight (PARENT_SHARES); None where not writable.

    Docker's containers go there too (`--cgroup-parent`): under docker's own parent they would all
    weigh like one task of the machine's.
    """
    parent = root / "cpu" / PARENT
    try:
        parent.mkdir(exist_ok=True)
        _write(parent / "cpu.shares", PARENT_SHARES)
    except OSError as exc:
        logger.debug("cannot weigh %s: %s", parent, exc)
        return None
    return parent


def available(root: Path = ROOT) -> list[str]:
    """The v1 controllers this agent can make cgroups in."""
    ok = []
    for name in CONTROLLERS:
        base = root / name
        if (base / "cgroup.procs").exists() and os.access(base, os.W_OK):
            ok.append(name)
    return ok


@dataclasses.dataclass
class LeaseCgroup:
    """The cgroups of one lease, one per available controller."""

    lease_id: str
    controllers: list[str]
    root: Path = ROOT

    def path(self, controller: str) -> Path:
        return self.root / controller / PARENT / self.lease_id

    @property
    def procs_files(self) -> list[Path]:
        return [self.path(c) / "cgroup.procs" for c in self.controllers]

    def create(self, *, memory_mb: int | None, pids: int | None, cpus: float | None) -> None:
        for c in self.controllers:
            self.path(c).mkdir(parents=True, exist_ok=True)
        if "memory" in self.controllers and memory_mb:
            _write(self.path("memory") / "memory.limit_in_bytes", memory_mb * 1024 * 1024)
            # No swap here, but where there is some, the limit must hold for memory+swap too.
            memsw = self.path("memory") / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, memory_mb * 1024 * 1024, quiet=True)
        if "pids" in self.controllers and pids:
            _write(self.path("pids") / "pids.max", pids)
        if "cpu" in self.controllers:  # weighed from the start; capped by cap_cpu
            weigh_parent(self.root)
            _write(self.path("cpu") / "cpu.shares", int(SHARES_PER_CPU * max(1.0, cpus or 1.0)), quiet=True)

    def cap_cpu(self, cpus: float | None) -> None:
        """At most `cpus` cores from now on (the CFS quota); None: no cap."""
        if "cpu" in self.controllers and cpus:
            _write(self.path("cpu") / "cpu.cfs_period_us", CPU_PERIOD_US)
            _write(self.path("cpu") / "cpu.cfs_quota_us", int(cpus * CPU_PERIOD_US))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for c in self.controllers:
            try:
                found |= {int(x) for x in (self.path(c) / "cgroup.procs").read_text().split()}
            except (OSError, ValueError):
                continue
        return sorted(found)

    def kill_all(self, timeout_s: float = 10.0) -> list[int]:
        """Freeze, SIGKILL everything, thaw, until empty: nothing can fork past a frozen cgroup. Returns survivors."""
        frozen = "freezer" in self.controllers
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids or time.monotonic() > deadline:
                return pids
            if frozen:
                _write(self.path("freezer") / "freezer.state", "FROZEN", quiet=True)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if frozen:
                _write(self.path("freezer") / "freezer.state", "THAWED", quiet=True)
            time.sleep(0.05)

    def oom_kills(self) -> int:
        try:
            for line in (self.path("memory") / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        for c in self.controllers:
            path = self.path(c)
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last process is being reaped
                    time.sleep(0.05)
            else:
                logger.warning("cgroup %s could not be removed", path)


def _write(path: Path, value, *, quiet: bool = False) -> None:
    try:
        path.write_text(str(value))
    except OSError as exc:
        if not quiet:
            raise
        logger.debug("cannot write %s: %s", path, exc)
