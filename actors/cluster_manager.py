"""ClusterManager: buyer clusters' state machine, their leases of machines, launcher calls, reconcile loop."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import secrets
import time
import uuid
from typing import Awaitable, Callable, Protocol

from actors import auth, cluster_views as views, domain, errors, placement, quotas
from actors import joins as joins_mod
from actors import node_observer
from actors import metrics as metrics_mod
from actors import quota_book
from actors import usage as usage_mod
from actors import cluster_store as cstore
from actors import launcher as launcher_mod
from actors.launcher import Launcher
from actors.settings import PlatformSettings
from configs import aws, market
from configs.models import ClusterSpec
from worker import protocol

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
RAY_START = re.compile(r"\bray\s+start\b")
LEASE_OPEN_TIMEOUT_S = 30.0
NODE_OPEN_ATTEMPTS = 3  # a node a machine fails to open is tried again (elsewhere where it fits), this often in all
LEASE_CLOSE_TIMEOUT_S = 30.0
TEARDOWN_TIMEOUT_S = 120.0
EXPIRY_BACKSTOP_S = 10.0
SWEEP_INTERVAL_S = 60.0
# An agent's heartbeat lists the leases it held when it was sent: one opened since may be missing from it.
HELD_MARGIN_S = 30.0


class Registry(Protocol):
    """What the manager needs of the ProviderRegistry (the actor, or the plain class in tests)."""

    async def send_work(self, machine_id: str, kind: str, payload: dict, timeout_s: float) -> dict: ...

    async def signing_secret(self) -> str: ...

    async def lease_liveness(self) -> dict: ...


def lost_because(lease: dict, machine_status: str | None, held: dict | None) -> str | None:
    """Why a live lease is lost (its machine is not online, or its agent no longer holds it), else None."""
    if machine_status != domain.MachineStatus.ONLINE.value:
        return f"machine {lease['machine_id']} is {machine_status or 'unknown'}"
    if (lease["status"] == domain.LeaseStatus.OPEN.value and held is not None and lease["id"] not in held["leases"]
            and lease["opened_at"] is not None and lease["opened_at"] < held["at"] - HELD_MARGIN_S):
        return f"the agent on machine {lease['machine_id']} no longer runs it (the agent restarted)"
    return None


class Reaper(Protocol):
    async def schedule(self, cluster_id: str) -> float | None: ...


class ClusterManager:
    """Plain class with the logic; `actors.actor_classes` turns it into a detached actor."""

    def __init__(self, store: cstore.ClusterStore, settings: PlatformSettings, *, registry: Registry,
                 launcher: Launcher, reaper: Reaper | None = None, clock: Callable[[], float] = time.time,
                 metrics: metrics_mod.Metrics | None = None, observer: node_observer.Observer | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self._store = store
        self._metrics = metrics or metrics_mod.NullMetrics()
        self._settings = settings
        self._registry = registry
        self._launcher = launcher
        self._reaper = reaper
        self._clock = clock
        self._quotas = quota_book.QuotaBook(store, settings, clock)
        # Joined (billed) = seen ALIVE in the cluster's own GCS, never a command's exit status.
        self._joins = joins_mod.JoinWatcher(store, settings.clusters_dir, observer or node_observer.NodeObserver(),
                                            clock=clock, sleep=sleep)
        self._tokens: auth.TokenIssuer | None = None
        self._placement_lock = asyncio.Lock()  # placements see each other's reservations
        self._tasks: dict[str, asyncio.Task] = {}  # cluster id → its provisioning or teardown
        self._last_sweep = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Recovers: a launch in flight when the manager died cannot be resumed safely, so it is
        failed with a reason and torn down; an interrupted teardown is finished."""
        await self._store.conn()
        self._tokens = auth.TokenIssuer(await self._registry.signing_secret(), clock=self._clock)
        interrupted = await self._store.clusters_with_status(S.TERMINATING)
        for row in await self._store.clusters_with_status(S.PENDING, S.PROVISIONING):
            await self._fail(row["id"], "the control plane restarted while the cluster was provisioning")
        for row in interrupted:
            self._spawn(row["id"], self._teardown(row["id"], S(row["ending_as"] or S.TERMINATED.value)))

    async def run_reconcile_loop(self) -> None:
        """Notices joined workers, lost machines and ended lifetimes; never dies."""
        while True:
            await asyncio.sleep(self._settings.reconcile_interval_s)
            try:
                await self.reconcile_once()
            except Exception:
                logger.exception("reconcile step failed")

    async def reconcile_once(self) -> None:
        rows = await self._store.clusters_with_status(S.PROVISIONING, S.RUNNING, S.DEGRADED)
        await self._joins.observe_all([row["id"] for row in rows])  # first: running never precedes a join
        now = self._clock()
        liveness = await self._registry.lease_liveness()
        for row in rows:
            try:
                await self._reconcile_cluster(row, now, liveness)
            except Exception:
                logger.exception("reconcile of cluster %s failed", row["id"])
        self._metrics.cluster_states(await self._store.count_clusters_by_status())
        if now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            await self.sweep()

    async def sweep(self) -> dict:
        """Releases what no live cluster owns: leases of ended clusters (a close that failed, a crash
        between steps) and launcher temp files of ended clusters. Agents drop their own strays when
        a heartbeat's answer names them (ProviderRegistry.heartbeat)."""
        closed = 0
        for lease in await self._store.active_leases():
            cluster = await self._store.get_cluster(lease["cluster_id"])
            if cluster is None or S(cluster["status"]).is_terminal():
                await self._close_lease(lease["cluster_id"], lease)
                closed += 1
        removed = launcher_mod.remove_stale_files(self._settings.state_dir / "launcher-tmp",
                                                  older_than_s=SWEEP_INTERVAL_S)
        if closed or removed:
            logger.info("sweep: closed %d stray lease(s), removed %d launcher file(s)", closed, removed)
        return {"leases_closed": closed, "launcher_files_removed": removed}

    async def _reconcile_cluster(self, row: dict, now: float, liveness: dict | None = None) -> None:
        cid = row["id"]
        if row["expires_at"] + EXPIRY_BACKSTOP_S <= now:  # the ExpiryReaper missed it (e.g. it is restarting)
            await self.expire(cid, row["expires_at"])
            return
        spec = ClusterSpec.model_validate_json(row["spec"])
        if spec.backend == "aws":
            return  # EC2 nodes: the sub-cluster's own autoscaler keeps min_workers; no leases to watch
        leases = await self._store.leases_of(cid)
        live = [l for l in leases if domain.LeaseStatus(l["status"]).holds_capacity()]
        if liveness is None:
            liveness = await self._registry.lease_liveness()
        statuses = await self._store.machine_statuses([l["machine_id"] for l in live], liveness["silence_cutoff"])
        for lease in live:
            why = lost_because(lease, statuses.get(lease["machine_id"]), liveness["held"].get(lease["machine_id"]))
            if why and await self._store.end_lease(lease["id"], domain.LeaseStatus.LOST, now):
                await self._event(cid, "lease_lost", f"{lease['role']} node {lease['id']} lost: {why}")
                if lease["role"] == "head":
                    await self._fail(cid, f"the head node {lease['id']} was lost: {why}")
                    return
        joined = [l for l in await self._store.leases_of(cid)
                  if l["status"] == domain.LeaseStatus.OPEN.value and l["joined_at"]]
        head_joined = any(l["role"] == "head" for l in joined)
        workers_joined = sum(1 for l in joined if l["role"] == "worker")
        if row["status"] in (S.RUNNING.value, S.DEGRADED.value):
            await self._check_workers(row, workers_joined, spec.num_workers, now)
        if row["status"] == S.PROVISIONING.value:
            if head_joined and workers_joined >= spec.num_workers:
                if await self._store.set_cluster_status(cid, S.RUNNING, now, only_from=(S.PROVISIONING,)):
                    self._metrics.provisioned(now - row["created_at"])
                    await self._event(cid, "running", f"running: head and {workers_joined} worker(s) joined "
                                      f"{now - row['created_at']:.1f} s after the request")
            elif now - row["created_at"] > self._settings.provision_timeout_s:
                await self._fail(cid, f"not running after {self._settings.provision_timeout_s:.0f} s: "
                                      f"{workers_joined}/{spec.num_workers} workers joined")

    async def _check_workers(self, row: dict, joined: int, wanted: int, now: float) -> None:
        """Running with fewer workers → degraded (the head's autoscaler asks for replacements); back → running."""
        cid = row["id"]
        if joined < wanted and row["status"] == S.RUNNING.value:
            reason = f"{joined}/{wanted} workers: a worker's machine was lost; replacing it on another machine"
            if await self._store.set_cluster_status(cid, S.DEGRADED, now, reason=reason, only_from=(S.RUNNING,)):
                await self._event(cid, "degraded", reason)
        elif joined >= wanted and row["status"] == S.DEGRADED.value:
            if await self._store.set_cluster_status(cid, S.RUNNING, now, only_from=(S.DEGRADED,)):
                await self._store.clear_reason(cid)
                await self._event(cid, "running", f"back to {joined} worker(s)")

    async def note_no_capacity(self, cluster_id: str, detail: str) -> None:
        row = await self._store.get_cluster(cluster_id)
        if row and row["status"] == S.DEGRADED.value and detail not in (row["reason"] or ""):
            reason = f"{row['reason'].split(';')[0]}; no matching machine is free: {detail}"
            await self._store.set_cluster_status(cluster_id, S.DEGRADED, self._clock(), reason=reason)

    # --- lifetimes (the ExpiryReaper calls these) ----------------------------------------

    async def expire(self, cluster_id: str, deadline: float) -> bool:
        late = self._clock() - deadline
        return await self._begin_teardown(cluster_id, S.EXPIRED,
                                          f"its lifetime ended (teardown started {late:.3f} s after the deadline)")

    async def warn_expiry(self, cluster_id: str, deadline: float) -> None:
        await self._event(cluster_id, "expiry_warning",
                          f"expires in {deadline - self._clock():.0f} s; POST /v1/clusters/{cluster_id}/extend "
                          "to keep it")

    async def extend_cluster(self, principal: auth.Principal, cluster_id: str, duration_s: int) -> dict:
        row = await self._own_cluster(principal, cluster_id)
        if not S(row["status"]).is_active():
            raise errors.Conflict(f"cluster {cluster_id} is {row['status']}: only a live cluster can be extended")
        new_expiry = row["expires_at"] + duration_s
        limit = row["created_at"] + self._settings.max_lifetime_s
        if new_expiry > limit:
            room = max(0, int(limit - row["expires_at"]))
            raise errors.Conflict(f"a cluster lives at most {self._settings.max_lifetime_s} s; this one can be "
                                  f"extended by at most {room} s more")
        async with self._placement_lock:  # quota checks see each other's reservations
            await self._quotas.check(row["owner_id"], quotas.extension_demand(
                ClusterSpec.model_validate_json(row["spec"]), duration_s))
            await self._store.set_expiry(cluster_id, new_expiry, self._clock())
        await self._event(cluster_id, "extended", f"lifetime extended by {duration_s} s by {principal.username}")
        await self._schedule_expiry(cluster_id)
        return await self._public(await self._store.get_cluster(cluster_id))

    async def _schedule_expiry(self, cluster_id: str) -> None:
        if self._reaper is None:
            return
        try:
            await self._reaper.schedule(cluster_id)
        except Exception:  # the reaper reloads every deadline from the database when it (re)starts
            logger.exception("could not reach the expiry reaper for %s", cluster_id)

    async def usage(self, principal: auth.Principal, start: float, end: float) -> dict:
        now = self._clock()
        if principal.role is domain.Role.PROVIDER:
            leases = await self._store.leases_in_window(start, end, provider_id=principal.account_id)
            summary = usage_mod.summarize(leases, group_by="machine_id", start=start, end=end, now=now)
            summary["total"]["earnings"] = summary["total"].pop("cost")
            for item in summary["items"]:
                item["earnings"] = item.pop("cost")
            return {"role": "provider", **summary}
        owner = None if principal.role is domain.Role.ADMIN else principal.account_id
        leases = await self._store.leases_in_window(start, end, owner_id=owner)
        return {"role": principal.role.value,
                **usage_mod.summarize(leases, group_by="cluster_id", start=start, end=end, now=now)}

    # --- buyer API ----------------------------------------------------------------------

    async def create_cluster(self, principal: auth.Principal, spec: dict) -> dict:
        views.require_buyer(principal)
        spec = ClusterSpec.model_validate(spec)
        if spec.backend == "aws":
            if self._settings.aws is None:
                raise errors.InvalidInput("backend 'aws' is not enabled on this platform; use backend 'market'")
            aws.check_spec(spec, self._settings.aws)
        now = self._clock()
        cid = "c-" + uuid.uuid4().hex[:12]
        async with self._placement_lock:
            await self._quotas.check(principal.account_id, quotas.cluster_demand(spec))
            if spec.backend == "aws":
                leases, summary = [], f"EC2: a {self._settings.aws.head_instance_type} head and {spec.num_workers} " \
                                      f"{self._settings.aws.worker_instance_type} worker(s)"
            else:
                assignments = await self._place(cid, placement.cluster_requests(
                    spec.num_workers, spec.gpus_per_worker, spec.cpus_per_worker, spec.gpu_model,
                    max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
                    max_price_per_cpu_hour=spec.max_price_per_cpu_hour))
                leases = [views.lease_row(a) for a in assignments]
                summary = "machines reserved: " + ", ".join(f"{l['role']} on {l['machine_id']}" for l in leases)
            await self._store.create_cluster(
                cluster={"id": cid, "owner_id": principal.account_id, "name": spec.name or cid,
                         "spec": spec.model_dump_json(), "status": S.PENDING.value,
                         "expires_at": now + spec.duration_s},
                leases=leases, event=summary, now=now)
        views.write_cluster_token(self._settings.clusters_dir / cid, secrets.token_hex(32))
        logger.info("cluster %s created for %s: %d worker(s)", cid, principal.username, spec.num_workers)
        await self._schedule_expiry(cid)
        self._spawn(cid, self._provision(cid))
        return await self._public(await self._store.get_cluster(cid))

    async def get_quota(self, principal: auth.Principal, account_id: int) -> dict:
        return await self._quotas.view(principal, account_id)

    async def set_quota(self, principal: auth.Principal, account_id: int, overrides: dict) -> dict:
        async with self._placement_lock:  # never between another request's check and its reservation
            return await self._quotas.set(principal, account_id, overrides)

    async def list_clusters(self, principal: auth.Principal) -> list[dict]:
        owner = None if principal.role is domain.Role.ADMIN else principal.account_id
        views.require_buyer_or_admin(principal)
        return [await self._public(r) for r in await self._store.list_clusters(owner)]

    async def get_cluster(self, principal: auth.Principal, cluster_id: str) -> dict:
        return await self._public(await self._own_cluster(principal, cluster_id))

    async def delete_cluster(self, principal: auth.Principal, cluster_id: str) -> dict:
        """Idempotent: an ended cluster is returned as it is."""
        row = await self._own_cluster(principal, cluster_id)
        if S(row["status"]).is_active():
            await self._begin_teardown(cluster_id, S.TERMINATED, f"deleted by {principal.username}")
        return await self._public(await self._store.get_cluster(cluster_id))

    async def cluster_events(self, principal: auth.Principal, cluster_id: str, after_id: int = 0) -> list[dict]:
        await self._own_cluster(principal, cluster_id)
        return await self._store.events(cluster_id, after_id)

    async def connection(self, principal: auth.Principal, cluster_id: str) -> dict:
        row = await self._own_cluster(principal, cluster_id)
        head = next((l for l in await self._store.leases_of(cluster_id)
                     if l["role"] == "head" and l["status"] == domain.LeaseStatus.OPEN.value and l["joined_at"]),
                    None)
        if not S(row["status"]).is_active() or head is None:
            raise errors.Conflict(f"cluster {cluster_id} is {row['status']}: connection details exist once its "
                                  "head node has joined (see GET /v1/clusters/{id}/events)")
        token = views.read_cluster_token(self._settings.clusters_dir / cluster_id)
        return views.connection_details(head["node_ip"], head["ports"], token)

    # --- node provider API (cluster-scoped credential) ----------------------------------

    async def list_nodes(self, principal: auth.Principal, cluster_id: str) -> list[dict]:
        await self._scoped_cluster(principal, cluster_id)
        return [views.public_node(l) for l in await self._store.leases_of(cluster_id)
                if l["status"] != domain.LeaseStatus.RESERVED.value]

    async def create_nodes(self, principal: auth.Principal, cluster_id: str, role: str, node_type: str,
                           tags: dict, count: int) -> list[dict]:
        row = await self._scoped_cluster(principal, cluster_id)
        if not S(row["status"]).is_active():
            raise errors.Conflict(f"cluster {cluster_id} is {row['status']}: no new nodes")
        spec = ClusterSpec.model_validate_json(row["spec"])
        async with self._placement_lock:
            leases = await self._store.leases_of(cluster_id)
            # The credential sits on the head, where buyers' job drivers run: never more nodes than paid for.
            limit = spec.num_workers if role == "worker" else 1
            open_now = sum(1 for l in leases if l["role"] == role and l["status"] == domain.LeaseStatus.OPEN.value)
            if open_now + count > limit:
                raise errors.Conflict(f"cluster {cluster_id} has {open_now} open {role} node(s) of {limit}: "
                                      f"cannot add {count}")
            reserved = [l for l in leases
                        if l["role"] == role and l["status"] == domain.LeaseStatus.RESERVED.value][:count]
            missing = count - len(reserved)
            request = _node_request(spec, role)
            if missing > 0:  # e.g. a replacement: reserve more on other machines, at the buyer's price
                extra = [views.lease_row(a) for a in await self._place(cluster_id, [request] * missing)]
                await self._store.add_leases(cluster_id, extra, self._clock())
                reserved += [await self._store.get_lease(l["id"]) for l in extra]
        opened = await asyncio.gather(*(self._open_node(row, l, request, node_type, tags) for l in reserved))
        return [views.public_node(l) for l in opened]

    async def set_node_tags(self, principal: auth.Principal, cluster_id: str, node_id: str, tags: dict) -> dict:
        lease = await self._scoped_lease(principal, cluster_id, node_id)
        merged = {**lease["tags"], **tags}
        await self._store.set_lease_tags(node_id, merged)
        return views.public_node({**lease, "tags": merged})

    async def terminate_node(self, principal: auth.Principal, cluster_id: str, node_id: str) -> dict:
        await self._scoped_lease(principal, cluster_id, node_id)
        await self._close_lease(cluster_id, await self._store.get_lease(node_id))
        return views.public_node(await self._store.get_lease(node_id))

    async def exec_on_node(self, principal: auth.Principal, cluster_id: str, node_id: str, body: dict) -> dict:
        lease = await self._scoped_lease(principal, cluster_id, node_id)
        if lease["status"] != domain.LeaseStatus.OPEN.value:
            if body.get("op") == "run" and re.search(r"\bray\s+stop\b", body.get("cmd", "")):
                return {"ok": True, "exit_code": 0, "output": "node already released", "data": {}}
            raise errors.Conflict(f"node {node_id} is {lease['status']}: it runs no commands")
        payload = protocol.LeaseExec(lease_id=node_id, **body)
        result = await self._registry.send_work(lease["machine_id"], protocol.LEASE_EXEC,
                                                payload.model_dump(), timeout_s=payload.timeout_s + 10)
        if payload.op == "run" and RAY_START.search(payload.cmd):
            if result.get("ok"):
                # The agent's ok proves nothing: the node counts once the cluster's GCS lists it ALIVE.
                if not await self._joins.wait_joined(cluster_id, node_id):
                    return await self._not_joined(cluster_id, lease, result)
                # Running the moment the last node joins, not at the next reconcile tick.
                await self._reconcile_cluster(await self._store.get_cluster(cluster_id), self._clock())
            else:
                await self._event(cluster_id, "command_failed",
                                  f"`ray start` failed on {lease['role']} node {node_id} (exit "
                                  f"{result.get('exit_code')}): {views.tail(result.get('output', ''))}")
        return result

    async def _not_joined(self, cluster_id: str, lease: dict, result: dict) -> dict:
        """A `ray start` that reported ok but whose node never showed up ALIVE fails like any failed
        start: the head's launcher or autoscaler sees the error and replaces (or fails) the node."""
        message = (f"`ray start` reported success on {lease['role']} node {lease['id']} (machine "
                   f"{lease['machine_id']}), but its node was not ALIVE in the cluster's GCS within "
                   f"{joins_mod.JOIN_WAIT_S:.0f} s: treated as a failed start")
        await self._event(cluster_id, "join_failed", message)
        return {"ok": False, "exit_code": result.get("exit_code"),
                "output": f"{result.get('output', '')}\n{message}".lstrip("\n"), "data": {}}

    # --- internals ----------------------------------------------------------------------

    async def _capacities(self, cluster_id: str) -> list[placement.MachineCapacity]:
        cutoff = self._clock() - self._settings.offline_after_s
        machines = await self._store.online_machines(cutoff)
        active = await self._store.active_leases()
        caps = placement.capacities(machines, active)
        mine = collections.Counter(l["machine_id"] for l in active if l["cluster_id"] == cluster_id)
        for cap in caps:
            cap.leases_of_cluster = mine[cap.machine_id]
        return caps

    async def _place(self, cluster_id: str, requests: list[placement.NodeRequest]) -> list[placement.Assignment]:
        try:
            return placement.place(await self._capacities(cluster_id), requests)
        except placement.InsufficientCapacity as exc:
            raise errors.Conflict(str(exc), available=exc.available) from None

    async def _open_node(self, cluster: dict, lease: dict, request: placement.NodeRequest, node_type: str,
                         tags: dict) -> dict:
        """Opens a reserved node. A machine that fails to open it loses the reservation, and another is
        reserved (a different machine where one fits, placement.replacement) up to NODE_OPEN_ATTEMPTS
        times in all; each attempt is an event."""
        cid, failed = cluster["id"], []
        for attempt in range(1, NODE_OPEN_ATTEMPTS + 1):
            opened = await self._open_lease(cluster, lease, node_type, tags, attempt)
            if opened is not None:
                return opened
            failed.append(lease["machine_id"])
            if attempt == NODE_OPEN_ATTEMPTS:
                break
            async with self._placement_lock:  # the failed reservation is released: reserve the next atomically
                row = await self._store.get_cluster(cid)
                if row is None or not S(row["status"]).is_active():
                    raise errors.Conflict(f"cluster {cid} is {row and row['status']}: no new nodes")
                try:
                    assignment = placement.replacement(await self._capacities(cid), request, set(failed))
                except placement.InsufficientCapacity as exc:
                    await self._event(cid, "node_retry_failed", f"{request.role} node: no machine to retry on "
                                      f"after attempt {attempt}: {exc}")
                    raise errors.Conflict(f"{request.role} node of cluster {cid}: machine(s) {', '.join(failed)} "
                                          f"could not open it and no other fits: {exc}") from None
                retry = views.lease_row(assignment)
                await self._store.add_leases(cid, [retry], self._clock())
            lease = await self._store.get_lease(retry["id"])
            await self._event(cid, "node_retry", f"{request.role} node: attempt {attempt + 1} of "
                              f"{NODE_OPEN_ATTEMPTS} on machine {lease['machine_id']} as node {lease['id']} "
                              f"(failed so far: {', '.join(failed)})")
        raise errors.Conflict(f"{request.role} node of cluster {cid} could not be opened in {NODE_OPEN_ATTEMPTS} "
                              f"attempts (machines {', '.join(failed)}); see the cluster's events")

    async def _open_lease(self, cluster: dict, lease: dict, node_type: str, tags: dict, attempt: int) -> dict | None:
        """One try: the opened lease, or None when the machine could not open it (the lease is then lost)."""
        machine = await self._store.machine_summary(lease["machine_id"])
        head = next((l for l in await self._store.leases_of(cluster["id"])
                     if l["role"] == "head" and l["status"] == domain.LeaseStatus.OPEN.value), None)
        payload = protocol.LeaseOpen(
            lease_id=lease["id"], cluster_id=cluster["id"], role=lease["role"], gpu_indices=lease["gpus"],
            resources={f"provider_{lease['machine_id']}": 1.0},
            labels=views.node_labels(cluster["id"], lease, machine),
            ray_auth_token=views.read_cluster_token(self._settings.clusters_dir / cluster["id"]),
            head_gcs_port=head["ports"]["gcs"] if head and lease["role"] == "worker" else None,
            cpus=lease["cpus"], image=ClusterSpec.model_validate_json(cluster["spec"]).image)
        result = await self._registry.send_work(lease["machine_id"], protocol.LEASE_OPEN, payload.model_dump(),
                                                timeout_s=LEASE_OPEN_TIMEOUT_S)
        if not result.get("ok"):
            await self._store.end_lease(lease["id"], domain.LeaseStatus.LOST, self._clock())
            await self._event(cluster["id"], "lease_failed",
                              f"attempt {attempt} of {NODE_OPEN_ATTEMPTS}: machine {lease['machine_id']} could "
                              f"not open {lease['role']} node {lease['id']}: {views.tail(result.get('output', ''))}")
            return None
        opened = protocol.LeaseOpened.model_validate(result["data"])
        await self._store.open_lease(lease["id"], node_type=node_type, tags=tags, ports=opened.ports,
                                     node_ip=opened.node_ip, now=self._clock())
        await self._event(cluster["id"], "node_opened",
                          f"{lease['role']} node {lease['id']} opened on machine {lease['machine_id']} "
                          f"({opened.node_ip})")
        return await self._store.get_lease(lease["id"])

    async def _close_lease(self, cluster_id: str, lease: dict) -> None:
        if lease["status"] == domain.LeaseStatus.OPEN.value:
            payload = protocol.LeaseClose(lease_id=lease["id"]).model_dump()
            result = await self._registry.send_work(lease["machine_id"], protocol.LEASE_CLOSE, payload,
                                                    timeout_s=LEASE_CLOSE_TIMEOUT_S)
            if not result.get("ok"):
                # The agent cleans up leases the platform no longer knows when it returns.
                await self._event(cluster_id, "lease_close_failed",
                                  f"node {lease['id']}: {views.tail(result.get('output', ''))}")
        if await self._store.end_lease(lease["id"], domain.LeaseStatus.CLOSED, self._clock()):
            if lease["status"] == domain.LeaseStatus.OPEN.value:
                await self._event(cluster_id, "node_closed", f"{lease['role']} node {lease['id']} released")

    async def _provision(self, cluster_id: str) -> None:
        row = await self._store.get_cluster(cluster_id)
        if not await self._store.set_cluster_status(cluster_id, S.PROVISIONING, self._clock(), only_from=(S.PENDING,)):
            return
        await self._event(cluster_id, "provisioning", "starting the head node with the Ray cluster launcher")
        try:
            await asyncio.wait_for(self._launcher.create(self._launcher_config(row)),
                                   timeout=self._settings.provision_timeout_s)
        except Exception as exc:
            await self._fail(cluster_id, f"the cluster launcher failed: {views.describe(exc)}")
            return
        spec = ClusterSpec.model_validate_json(row["spec"])
        await self._event(cluster_id, "head_ready",
                          f"head node up; its autoscaler is starting {spec.num_workers} worker(s)")
        if spec.backend == "aws" and await self._store.set_cluster_status(
                cluster_id, S.RUNNING, self._clock(), only_from=(S.PROVISIONING,)):
            await self._event(cluster_id, "running", "running: the EC2 head is up; workers join through "
                              "the sub-cluster's own autoscaler")

    async def _begin_teardown(self, cluster_id: str, final: S, reason: str) -> bool:
        if await self._store.set_cluster_status(cluster_id, S.TERMINATING, self._clock(), ending_as=final,
                                                only_from=S.active()):
            await self._event(cluster_id, "terminating", f"tearing down: {reason}")
            provisioning = self._tasks.pop(cluster_id, None)
            if provisioning is not None:
                provisioning.cancel()
            self._spawn(cluster_id, self._teardown(cluster_id, final, reason))
            return True
        return False

    async def _fail(self, cluster_id: str, reason: str) -> None:
        logger.warning("cluster %s failed: %s", cluster_id, reason)
        await self._event(cluster_id, "failed", reason)
        if await self._store.set_cluster_status(cluster_id, S.TERMINATING, self._clock(), reason=reason,
                                                ending_as=S.FAILED, only_from=S.active()):
            provisioning = self._tasks.pop(cluster_id, None)
            if provisioning is not None and provisioning is not asyncio.current_task():
                provisioning.cancel()
            self._spawn(cluster_id, self._teardown(cluster_id, S.FAILED, reason))

    async def _teardown(self, cluster_id: str, final: S, reason: str | None = None) -> None:
        """Releases every node at once (the agents stop exactly the lease's processes, in parallel),
        then lets the launcher clear what it keeps of the cluster, then records the end."""
        started = self._clock()
        row = await self._store.get_cluster(cluster_id)
        leases = await self._store.leases_of(cluster_id)
        had_nodes = any(l["status"] == domain.LeaseStatus.OPEN.value for l in leases) or \
            json.loads(row["spec"]).get("backend") == "aws"
        # All at once: the head's autoscaler cannot replace a worker meanwhile, since the cluster is
        # terminating and create_nodes refuses.
        await asyncio.gather(*(self._close_lease(cluster_id, l) for l in leases))
        self._metrics.released(self._clock() - started)
        await self._event(cluster_id, "released", f"all nodes released in {self._clock() - started:.1f} s")
        if had_nodes:
            try:
                await asyncio.wait_for(self._launcher.teardown(self._launcher_config(row)), timeout=TEARDOWN_TIMEOUT_S)
            except Exception as exc:
                await self._event(cluster_id, "teardown_warning", f"launcher teardown: {views.describe(exc)}")
        await self._store.set_cluster_status(cluster_id, final, self._clock(), reason=reason)
        await self._event(cluster_id, final.value, f"{final.value} {self._clock() - started:.1f} s after "
                          "the teardown began")

    def _launcher_config(self, row: dict) -> dict:
        spec = ClusterSpec.model_validate_json(row["spec"])
        if spec.backend == "aws":
            config = aws.render_aws_config(cluster_id=row["id"], spec=spec, settings=self._settings.aws,
                                           ray_auth_token_path=self._settings.clusters_dir / row["id"] / "ray_auth_token")
            config["provider"]["dcluster_vpc_id"] = self._settings.aws.vpc_id
            return config
        ttl = int(row["expires_at"] - self._clock()) + 3600
        principal = auth.Principal(row["owner_id"], "cluster-" + row["id"], domain.Role.BUYER, cluster_id=row["id"])
        token = self._tokens.issue(principal, ttl_s=max(ttl, 3600))
        return market.render_market_config(cluster_id=row["id"], spec=ClusterSpec.model_validate_json(row["spec"]),
                                           platform_url=self._settings.api_url, provider_token=token)

    def _spawn(self, cluster_id: str, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[cluster_id] = task

        def done(t: asyncio.Task) -> None:
            if self._tasks.get(cluster_id) is t:
                self._tasks.pop(cluster_id, None)
            if not t.cancelled() and t.exception() is not None:
                logger.error("background work of cluster %s failed", cluster_id, exc_info=t.exception())
        task.add_done_callback(done)

    async def _event(self, cluster_id: str, kind: str, message: str) -> None:
        logger.info("cluster %s: %s", cluster_id, message)
        await self._store.add_event(cluster_id, kind, message, self._clock())

    async def _own_cluster(self, principal: auth.Principal, cluster_id: str) -> dict:
        views.require_buyer_or_admin(principal)
        row = await self._store.get_cluster(cluster_id)
        if row is None or (principal.role is not domain.Role.ADMIN and row["owner_id"] != principal.account_id):
            raise errors.NotFound(f"cluster {cluster_id} not found")
        return row

    async def _scoped_cluster(self, principal: auth.Principal, cluster_id: str) -> dict:
        if principal.cluster_id != cluster_id and principal.role is not domain.Role.ADMIN:
            raise errors.NotFound(f"cluster {cluster_id} not found")
        row = await self._store.get_cluster(cluster_id)
        if row is None:
            raise errors.NotFound(f"cluster {cluster_id} not found")
        return row

    async def _scoped_lease(self, principal: auth.Principal, cluster_id: str, node_id: str) -> dict:
        await self._scoped_cluster(principal, cluster_id)
        lease = await self._store.get_lease(node_id)
        if lease is None or lease["cluster_id"] != cluster_id:
            raise errors.NotFound(f"node {node_id} not found in cluster {cluster_id}")
        return lease

    async def _public(self, row: dict) -> dict:
        spec = json.loads(row["spec"])
        leases = await self._store.leases_of(row["id"])
        nodes = [views.public_node(l) for l in leases]
        return {
            "id": row["id"], "name": row["name"], "status": row["status"], "reason": row["reason"],
            **{k: spec[k] for k in ("num_workers", "gpus_per_worker", "gpu_model", "cpus_per_worker",
                                    "duration_s", "backend")},
            **{k: spec.get(k) for k in ("max_price_per_gpu_hour", "max_price_per_cpu_hour")},
            "created_at": row["created_at"], "expires_at": row["expires_at"], "running_at": row["running_at"],
            "ended_at": row["ended_at"],
            "workers_joined": sum(1 for n in nodes if n["role"] == "worker" and n["status"] == "open" and n["joined"]),
            "head_node_ip": next((n["node_ip"] for n in nodes if n["role"] == "head" and n["status"] == "open"), None),
            "nodes": nodes,
        }


def _node_request(spec: ClusterSpec, role: str) -> placement.NodeRequest:
    """One more node of the cluster, at the buyer's price ceiling (stored with the spec)."""
    return placement.node_request(role, spec.gpus_per_worker, spec.cpus_per_worker, spec.gpu_model,
                                  max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
                                  max_price_per_cpu_hour=spec.max_price_per_cpu_hour)
