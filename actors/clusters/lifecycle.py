"""A buyer cluster's lifecycle as a pure decision: given the cluster, its leases and their machines' statuses,
what one reconcile step must do (ClusterManager carries the actions out, in order)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from actors.db import records
from actors.machines.liveness import Held
from dcl_core import domain

S = domain.ClusterStatus
N = domain.NodeRole
# An agent's heartbeat lists the leases it held when it was sent: one opened since may be missing from it.
HELD_MARGIN_S = 30.0


@dataclasses.dataclass(frozen=True)
class Expire:
    """Its lifetime ended and the ExpiryReaper missed it: tear it down as expired. Ends the step."""

    deadline: float


@dataclasses.dataclass(frozen=True)
class LoseLease:
    """The lease is lost (why: its machine is not online, or its agent no longer runs it): end it as lost.
    With fail_reason (a lost head), the cluster fails too, once the lease was ended by this step, and the
    step ends there."""

    lease_id: str
    role: domain.NodeRole
    why: str
    fail_reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Transition:
    """Move the cluster from one status to another (only from that one), then record the event."""

    to: domain.ClusterStatus
    from_: domain.ClusterStatus
    event_kind: domain.EventKind
    message: str
    reason: str | None = None
    clear_reason: bool = False


@dataclasses.dataclass(frozen=True)
class Fail:
    """Fail the cluster with reason (it is torn down). Ends the step."""

    reason: str


Action = Expire | LoseLease | Transition | Fail


def lost_because(lease: records.Lease, machine_status: str | None, held: Held | None) -> str | None:
    """Why a live lease is lost (its machine is not online, or its agent no longer holds it), else None.

    held: what the machine's agent said in its latest heartbeat."""
    if machine_status != domain.MachineStatus.ONLINE:
        return f"machine {lease.machine_id} is {machine_status or 'unknown'}"
    if (
        lease.is_open
        and held is not None
        and lease.id not in held["leases"]
        and lease.opened_at is not None
        and lease.opened_at < held["at"] - HELD_MARGIN_S
    ):
        return f"the agent on machine {lease.machine_id} no longer runs it (the agent restarted)"
    return None


def decide(
    cluster: records.Cluster,
    leases: list[records.Lease],
    machines: Mapping[str, str],
    now: float,
    *,
    watch_leases: bool,
    provision_timeout_s: float,
    expiry_backstop_s: float,
    held: Mapping[str, Held] | None = None,
) -> list[Action]:
    """One reconcile step of a provisioning, running or degraded cluster.

    cluster: the cluster; leases: its leases; machines: the
    effective status (MachineStatus.effective) of each machine its live leases are on; held: per machine,
    the leases its agent said it holds in its latest heartbeat (ProviderRegistry.lease_liveness);
    watch_leases: False where the backend has no leases to watch (aws: the sub-cluster's own autoscaler
    keeps its workers)."""
    held = held or {}
    if cluster.expires_at + expiry_backstop_s <= now:
        return [Expire(cluster.expires_at)]
    if not watch_leases:
        return []
    actions: list[Action] = []
    lost: set[str] = set()
    for lease in leases:
        if not lease.status.holds_capacity():
            continue
        why = lost_because(lease, machines.get(lease.machine_id), held.get(lease.machine_id))
        if why:
            head = lease.role is N.HEAD
            actions.append(
                LoseLease(
                    lease.id,
                    lease.role,
                    why,
                    fail_reason=f"the head node {lease.id} was lost: {why}" if head else None,
                )
            )
            lost.add(lease.id)
            if head:
                return actions
    joined = [l for l in leases if l.id not in lost and l.is_open and l.joined]
    head_joined = any(l.role is N.HEAD for l in joined)
    workers = sum(1 for l in joined if l.role is N.WORKER)
    wanted = cluster.spec.num_workers
    status = cluster.status
    if status is S.RUNNING and workers < wanted:
        # The head's autoscaler asks for replacements; back to running once they joined.
        reason = f"{workers}/{wanted} workers: a worker's machine was lost; replacing it on another machine"
        actions.append(Transition(S.DEGRADED, S.RUNNING, domain.EventKind.DEGRADED, reason, reason=reason))
    elif status is S.DEGRADED and workers >= wanted:
        actions.append(
            Transition(
                S.RUNNING, S.DEGRADED, domain.EventKind.RUNNING, f"back to {workers} worker(s)", clear_reason=True
            )
        )
    elif status is S.PROVISIONING:
        if head_joined and workers >= wanted:
            actions.append(
                Transition(
                    S.RUNNING,
                    S.PROVISIONING,
                    domain.EventKind.RUNNING,
                    f"running: head and {workers} worker(s) joined {now - cluster.created_at:.1f} s after the request",
                )
            )
        elif now - cluster.created_at > provision_timeout_s:
            actions.append(Fail(f"not running after {provision_timeout_s:.0f} s: {workers}/{wanted} workers joined"))
    return actions
