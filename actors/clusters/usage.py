"""Metering: node-seconds from Ray join to leave, GPU/CPU-seconds and money (pure functions)."""

from __future__ import annotations

from typing import Any, Literal

from actors.db import records


def node_seconds(lease: records.Lease, start: float, end: float, now: float) -> float:
    """Seconds the lease's node was in Ray within [start, end]; a node still in Ray counts up to now."""
    if lease.joined_at is None:
        return 0.0
    left = lease.left_at if lease.left_at is not None else now
    return max(0.0, min(left, end) - max(lease.joined_at, start))


def lease_usage(lease: records.Lease, start: float, end: float, now: float) -> dict[str, float]:
    seconds = node_seconds(lease, start, end, now)
    gpus = len(lease.gpus)
    gpu_seconds, cpu_seconds = seconds * gpus, seconds * lease.cpus
    # GPU leases are billed per GPU-hour; CPU-only leases (and heads) per CPU-hour.
    cost = (gpu_seconds * lease.price_per_gpu_hour if gpus else cpu_seconds * lease.price_per_cpu_hour) / 3600
    return {"node_seconds": seconds, "gpu_seconds": gpu_seconds, "cpu_seconds": cpu_seconds, "cost": cost}


def _add(total: dict[str, Any], part: dict[str, float]) -> None:
    for key in ("node_seconds", "gpu_seconds", "cpu_seconds", "cost"):
        total[key] = total.get(key, 0.0) + part[key]


def summarize(
    leases: list[records.Lease],
    *,
    group_by: Literal["cluster_id", "machine_id"],
    start: float,
    end: float,
    now: float,
) -> dict[str, Any]:
    """Totals and one entry per cluster (group_by='cluster_id') or per machine (group_by='machine_id')."""
    groups: dict[str, dict[str, Any]] = {}
    total = {"node_seconds": 0.0, "gpu_seconds": 0.0, "cpu_seconds": 0.0, "cost": 0.0}
    for lease in leases:
        part = lease_usage(lease, start, end, now)
        key = lease.cluster_id if group_by == "cluster_id" else lease.machine_id
        entry = groups.setdefault(
            key, {group_by: key, "nodes": 0, "node_seconds": 0.0, "gpu_seconds": 0.0, "cpu_seconds": 0.0, "cost": 0.0}
        )
        entry["nodes"] += 1
        _add(entry, part)
        _add(total, part)
    rounded = [{k: round(v, 6) if isinstance(v, float) else v for k, v in g.items()} for g in groups.values()]
    return {
        "start": start,
        "end": end,
        "total": {k: round(v, 6) for k, v in total.items()},
        "items": sorted(rounded, key=lambda g: g[group_by]),
    }
