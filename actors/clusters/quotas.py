"""Per-account quotas: what an account holds, and the check (pure: decide here, act elsewhere).

The limits themselves (fields, bounds, defaults) are dcl_core.quota_limits.

Four limits, each named in the answer that refuses a request (403):

- ``max_clusters``: live clusters at once (pending, provisioning, running, degraded);
- ``max_gpus``: GPUs held at once (workers × GPUs per worker of the live clusters);
- ``max_cpus``: CPUs held at once (workers × CPUs per worker, plus each cluster's head);
- ``max_gpu_hours``: GPU-hours per rolling period (``period_s``, 30 days by default): what was
  metered in the period (Ray join → leave, actors/clusters/usage.py) plus what the live clusters have
  reserved until they expire, plus what the request adds (a new cluster's GPUs for its whole
  lifetime, or an extension's). A lifetime is paid for up front, so a cluster that fits its
  quota never runs out of it half-way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from actors.machines import placement
from dcl_core import errors, quota_limits
from dcl_core.cluster_spec import ClusterSpec


def effective(defaults: quota_limits.QuotaLimits, overrides: Mapping[str, Any] | None) -> quota_limits.QuotaLimits:
    """The account's limits: its overrides where set, the platform's defaults elsewhere."""
    set_here = {k: v for k, v in (overrides or {}).items() if k in quota_limits.LIMITS and v is not None}
    return defaults.model_copy(update=set_here)


@dataclasses.dataclass(frozen=True)
class Amounts:
    """What an account holds, or what a request adds."""

    clusters: int = 0
    gpus: int = 0
    cpus: int = 0
    gpu_hours: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"clusters": self.clusters, "gpus": self.gpus, "cpus": self.cpus, "gpu_hours": round(self.gpu_hours, 6)}


def cluster_demand(spec: ClusterSpec) -> Amounts:
    """A new cluster (a ClusterSpec): one cluster, its workers' GPUs and CPUs plus the head's, and
    its GPUs for its whole lifetime."""
    gpus = spec.num_workers * spec.gpus_per_worker
    return Amounts(
        1, gpus, spec.num_workers * spec.cpus_per_worker + placement.HEAD_CPUS, gpus * spec.duration_s / 3600
    )


def extension_demand(spec: ClusterSpec, duration_s: int) -> Amounts:
    """Extending a cluster by duration_s: only GPU-hours."""
    return Amounts(gpu_hours=spec.num_workers * spec.gpus_per_worker * duration_s / 3600)


def holding(live: list[tuple[ClusterSpec, float]], metered_gpu_seconds: float, now: float) -> Amounts:
    """What an account holds: live is (ClusterSpec, expires_at) of each live cluster;
    metered_gpu_seconds is what its nodes used in the period up to now."""
    clusters = gpus = cpus = 0
    reserved_gpu_s = 0.0
    for spec, expires_at in live:
        demand = cluster_demand(spec)
        clusters += 1
        gpus += demand.gpus
        cpus += demand.cpus
        reserved_gpu_s += demand.gpus * max(0.0, expires_at - now)
    return Amounts(clusters, gpus, cpus, (metered_gpu_seconds + reserved_gpu_s) / 3600)


_WHAT = {
    "max_clusters": ("clusters", "live cluster(s)"),
    "max_gpus": ("gpus", "GPU(s) held"),
    "max_cpus": ("cpus", "CPU(s) held"),
    "max_gpu_hours": ("gpu_hours", "GPU-hour(s)"),
}


def check(limits: quota_limits.QuotaLimits, held: Amounts, demand: Amounts, *, account: str) -> None:
    """Raises Forbidden (403) naming the first limit the request would pass."""
    for name in quota_limits.LIMITS:
        field, what = _WHAT[name]
        have, ask, limit = getattr(held, field), getattr(demand, field), getattr(limits, name)
        if ask and have + ask > limit + 1e-9:
            period = f" per {limits.period_s / 86_400:g} days" if name == "max_gpu_hours" else ""
            raise errors.Forbidden(
                f"quota {name} exceeded: account {account} may have {limit:g} {what}{period}, has {have:g} "
                f"and this request adds {ask:g}; end a cluster, ask for less, or ask an admin to raise "
                f"the quota (PUT /v1/accounts/{{id}}/quota)",
                limit=name,
            )
