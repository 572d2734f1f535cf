"""Clusters and leases as typed records, decoded once where the store reads their rows (the spec parsed into a
ClusterSpec, statuses and roles as their enums); what the ClusterManager's parts and the backends work with.

Records are NamedTuples, immutable like frozen dataclasses: every cluster read (GET /v1/clusters/{id}, thousands a
second) decodes its rows, and a NamedTuple is made in a fifth of a frozen dataclass's time."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, ParamSpec, TypeVar

from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec

# Statuses and roles by their stored text: a dict lookup costs a tenth of the enum's own (the cluster reads
# decode every row they answer with).
_CLUSTER_STATUSES = {s.value: s for s in domain.ClusterStatus}
_LEASE_STATUSES = {s.value: s for s in domain.LeaseStatus}
_ROLES = {r.value: r for r in domain.NodeRole}

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Cluster(NamedTuple):
    """A buyer cluster (a clusters row)."""

    id: str
    owner_id: int
    name: str
    spec: ClusterSpec
    status: domain.ClusterStatus
    reason: str | None
    created_at: float
    updated_at: float
    expires_at: float
    running_at: float | None
    ended_at: float | None
    ending_as: domain.ClusterStatus | None  # what a terminating cluster ends as

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Cluster:
        ending_as = row["ending_as"]
        return cls(
            row["id"],
            row["owner_id"],
            row["name"],
            ClusterSpec.model_validate_json(row["spec"]),
            _CLUSTER_STATUSES[row["status"]],
            row["reason"],
            row["created_at"],
            row["updated_at"],
            row["expires_at"],
            row["running_at"],
            row["ended_at"],
            _CLUSTER_STATUSES[ending_as] if ending_as else None,
        )


class Lease(NamedTuple):
    """A lease of a machine: one node of a cluster (a leases row, its JSON columns decoded by the store)."""

    id: str
    cluster_id: str
    machine_id: str
    role: domain.NodeRole
    gpus: tuple[int, ...]  # the machine's GPU indices it holds
    cpus: int
    price_per_gpu_hour: float
    price_per_cpu_hour: float
    status: domain.LeaseStatus
    node_type: str | None  # the launcher's node type, once open
    tags: dict[str, str]  # the launcher's tags of the node
    ports: dict[str, int] | None  # dcl_core.ray_ports.RayPorts of its node, once open
    node_ip: str | None
    created_at: float
    opened_at: float | None
    joined_at: float | None  # seen ALIVE in its cluster's GCS (billed from here)
    left_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Lease:
        return cls(
            row["id"],
            row["cluster_id"],
            row["machine_id"],
            _ROLES[row["role"]],
            tuple(row["gpus"]),
            row["cpus"],
            row["price_per_gpu_hour"],
            row["price_per_cpu_hour"],
            _LEASE_STATUSES[row["status"]],
            row["node_type"],
            row["tags"],
            row["ports"],
            row["node_ip"],
            row["created_at"],
            row["opened_at"],
            row["joined_at"],
            row["left_at"],
        )

    @property
    def is_open(self) -> bool:
        return self.status is domain.LeaseStatus.OPEN

    @property
    def joined(self) -> bool:
        return self.joined_at is not None

    def with_tags(self, tags: dict[str, str]) -> Lease:
        return self._replace(tags=tags)


# --- decoders of what the store's reads return, and the decorator that applies one ------------------------


def cluster_or_none(row: Mapping[str, Any] | None) -> Cluster | None:
    return Cluster.from_row(row) if row is not None else None


def clusters(rows: list[dict[str, Any]]) -> list[Cluster]:
    return [Cluster.from_row(r) for r in rows]


def clusters_by_id(rows: dict[str, dict[str, Any]]) -> dict[str, Cluster]:
    return {cid: Cluster.from_row(r) for cid, r in rows.items()}


def lease_or_none(row: Mapping[str, Any] | None) -> Lease | None:
    return Lease.from_row(row) if row is not None else None


def leases(rows: list[dict[str, Any]]) -> list[Lease]:
    return [Lease.from_row(r) for r in rows]


def leases_by_cluster(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[Lease]]:
    return {cid: leases(found) for cid, found in rows.items()}


def clusters_with_leases(
    rows: tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]],
) -> tuple[dict[str, Cluster], dict[str, list[Lease]]]:
    return clusters_by_id(rows[0]), leases_by_cluster(rows[1])


def decoded(decode: Callable[[R], T]) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[T]]]:
    """A store read whose rows its callers get as records: `@records.decoded(records.leases)` above it. The read
    itself keeps returning rows, so how it reads them (statements, fast paths) is its own business."""

    def wrap(read: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(read)
        async def reading(*args: P.args, **kwargs: P.kwargs) -> T:
            return decode(await read(*args, **kwargs))

        return reading

    return wrap
