"""Logs that outlive the cluster: what each lease shipped as it closed, capped per cluster, kept for a while.

The shipped files come from a provider's agent and were written by a buyer's code: both are
untrusted, so every entry is checked and capped here before anything is stored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from actors.db import cluster_store as cstore
from actors.db import records
from dcl_core import ids

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(ids.LEASE_LOG_NAME_PATTERN)
_TRUNCATED_NOTE = "[dcluster: earlier lines were left out: the file was longer than what was kept]\n"


def job_log_name(job_id: str) -> str:
    """Where Ray writes a submitted job's driver output, on the head node."""
    return f"ray/job-driver-{job_id}.log"


def valid_files(shipped: object) -> list[dict[str, Any]]:
    """The well-formed entries of what an agent shipped; anything else is dropped."""
    if not isinstance(shipped, list):
        return []
    files = []
    for entry in shipped:
        if not isinstance(entry, dict):
            continue
        name, text = entry.get("name"), entry.get("text")
        if not isinstance(name, str) or not _NAME_RE.match(name) or not isinstance(text, str):
            continue
        size = entry.get("bytes")
        files.append(
            {
                "name": name,
                "text": text,
                "truncated": bool(entry.get("truncated")),
                "bytes": size if isinstance(size, int) and size >= 0 else len(text.encode()),
            }
        )
    return files


def fit(files: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Keeps files in the order given while the cluster's budget (bytes of text) lasts; the file
    that crosses it keeps its tail."""
    kept = []
    for f in files:
        if budget <= 0:
            break
        encoded = f["text"].encode("utf-8", errors="replace")
        if len(encoded) > budget:
            f = {**f, "text": encoded[-budget:].decode("utf-8", errors="ignore"), "truncated": True}
            encoded = f["text"].encode()
        budget -= len(encoded)
        kept.append(f)
    return kept


class ClusterLogs:
    """Keeps, lists, serves and purges the logs of clusters' leases."""

    def __init__(
        self, store: cstore.ClusterStore, *, max_bytes_per_cluster: int, retention_s: float, clock: Callable[[], float]
    ):
        self._store = store
        self._max_bytes = max_bytes_per_cluster
        self._retention_s = retention_s
        self._clock = clock

    async def keep(self, cluster_id: str, lease: records.Lease, shipped: object) -> int:
        """Stores what a closing lease shipped, within what is left of the cluster's budget; returns
        how many files were kept."""
        files = valid_files(shipped)
        if not files:
            return 0
        kept = await self._store.add_logs(
            cluster_id,
            lease.id,
            lease.role.value,
            lease.machine_id,
            lambda used: fit(files, self._max_bytes - used),
            self._clock(),
        )
        if len(kept) < len(files):
            logger.info(
                "cluster %s: %d of %d log file(s) of lease %s over the %d-byte cap were dropped",
                cluster_id,
                len(files) - len(kept),
                len(files),
                lease.id,
                self._max_bytes,
            )
        return len(kept)

    async def index(self, cluster_id: str) -> list[dict[str, Any]]:
        return await self._store.log_index(cluster_id)

    async def text(self, cluster_id: str, lease_id: str | None, name: str) -> dict[str, Any] | None:
        """The file, with a note at its top when only its tail was kept; None when not kept."""
        row = await self._store.log_file(cluster_id, lease_id, name)
        if row is None:
            return None
        if row["truncated"]:
            row = {**row, "text": _TRUNCATED_NOTE + row["text"]}
        return row

    async def purge(self) -> int:
        """Drops the logs of clusters that ended longer ago than the retention."""
        removed = await self._store.purge_logs(self._clock() - self._retention_s)
        if removed:
            logger.info("purged %d log file(s) of clusters ended over %.0f s ago", removed, self._retention_s)
        return removed
