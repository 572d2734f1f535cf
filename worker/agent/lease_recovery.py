"""At agent start: the leases a previous run of the agent left (a restart, an upgrade, a crash).

Each lease dir holds its record (lease.json, lease_files.Lease.record) with its sandbox's link. A lease
whose record is ours and whose sandbox still runs and answers for it (sandbox.base.Runtime.reattach) is
held again, as if this run had opened it: its processes never stopped, and the first heartbeat reports
it held, so the platform loses nothing. Every other lease dir (a record unreadable, foreign or of
another lease; a sandbox gone) is cleaned up as before: its processes stopped, its files removed; no
heartbeat holds it, so the platform counts it lost as it does any lease its agent stops holding.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from dcl_core import ids
from worker import procs
from worker.agent import lease_files, lease_fs

if TYPE_CHECKING:
    from worker.agent.leases import LeaseRunner

logger = logging.getLogger(__name__)

_LEASE_ID_RE = re.compile(ids.LEASE_ID_PATTERN)


@dataclasses.dataclass(frozen=True)
class Recovered:
    """What recover() found of a previous run: leases that run on (reattached), and those it cleaned up."""

    kept: list[str]
    dropped: list[str]


def recover(runner: LeaseRunner) -> Recovered:
    kept, dropped = [], []
    for entry in sorted(runner.root.iterdir()):
        lease_id = entry.name
        if not _LEASE_ID_RE.match(lease_id) or not entry.is_dir() or entry.is_symlink():
            continue
        if lease_id in runner.lease_ids():
            continue
        lease = reattach(runner, entry)
        if lease is not None:
            if runner.adopt(lease):
                kept.append(lease_id)
                logger.info("lease %s of %s runs on: reattached", lease_id, lease.cluster_id or lease.purpose)
            continue
        dropped.append(lease_id)
        clean_up(runner, entry)
    return Recovered(kept=kept, dropped=dropped)


def reattach(runner: LeaseRunner, lease_dir: Path) -> lease_files.Lease | None:
    """The lease of a previous run, its sandbox reached again; None when its record is not usable or its
    sandbox is gone."""
    try:
        record = lease_files.read_record(lease_dir)
        lease = lease_files.Lease.from_record(lease_dir, record)
    except ValueError as exc:
        logger.warning("lease %s from a previous run: its record is not usable (%s)", lease_dir.name, exc)
        return None
    try:
        lease.sandbox = runner.runtime.reattach(lease.lease_id, lease_dir, record["sandbox"])
    except Exception:
        logger.exception("lease %s: reattaching to its sandbox failed", lease.lease_id)
        return None
    if lease.sandbox is None:
        logger.warning("lease %s from a previous run: its sandbox no longer runs", lease.lease_id)
    return lease if lease.sandbox is not None else None


def clean_up(runner: LeaseRunner, lease_dir: Path) -> None:
    """Stop whatever is left of a lease no one holds, and remove its files (they stay if a process survives)."""
    lease_id = lease_dir.name
    runner.runtime.cleanup_stale(lease_id)
    summary = procs.stop_owned(lease_files.owner_tag(lease_id), grace_s=2.0)
    if not summary.clean:
        logger.warning("lease %s of a previous run: processes %s survive; its files stay", lease_id, summary.remaining)
        return
    lease_fs.remove_tree(lease_files.temp_dir_for(lease_id))
    lease_fs.remove_tree(lease_dir)
    logger.warning(
        "lease %s of a previous run of the agent cleaned up: %d process(es) stopped", lease_id, len(summary.terminated)
    )
