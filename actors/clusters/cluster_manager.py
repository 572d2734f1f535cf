"""ClusterManager: carries out buyer clusters' lifecycle (actors/clusters/lifecycle.py decides), opens and closes their
leases, calls the launcher, runs the reconcile loop. Its buyer API is in cluster_api.py, its node-provider
API in node_api.py, what differs per backend in actors/backends/backend.py."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from actors import metrics as metrics_mod
from actors.access import auth, cluster_files, platform_secrets
from actors.backends import backend
from actors.clusters import cluster_logs, lifecycle, node_observer, quota_book
from actors.clusters import cluster_views as views
from actors.clusters import joins as joins_mod
from actors.clusters.cluster_api import BuyerApi
from actors.clusters.node_api import NodeProviderApi
from actors.db import cluster_store as cstore
from actors.machines import gpu_checks, machine_index, placement, reputation
from actors.settings import PlatformSettings
from dcl_core import domain, errors, protocol
from dcl_core.cluster_spec import ClusterSpec

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
N = domain.NodeRole
T = TypeVar("T")
LEASE_OPEN_TIMEOUT_S = 30.0
NODE_OPEN_ATTEMPTS = 3  # a node a machine fails to open is tried again (elsewhere where it fits), this often in all
LEASE_CLOSE_TIMEOUT_S = 30.0
TEARDOWN_TIMEOUT_S = 120.0
EXPIRY_BACKSTOP_S = 10.0
SWEEP_INTERVAL_S = 60.0
# The machine index reads again the rows changed since its last read, this much earlier too: a write's time is
# taken before it commits (it may wait for the database's lock), so a later read must still catch it. Longer
# would read a whole fleet again at every placement for that long after it registered.
MACHINE_CHANGE_MARGIN_S = 5.0
# The whole table this often: uptime accrues with heartbeats, which mark nothing, and a write that took longer
# than the margin to commit is caught here.
MACHINE_RELOAD_S = 60.0


class Registry(Protocol):
    """What the manager needs of the ProviderRegistry (the actor, or the plain class in tests)."""

    async def send_work(self, machine_id: str, kind: str, payload: dict, timeout_s: float) -> dict: ...

    async def signing_secret(self) -> str: ...

    async def lease_liveness(self) -> dict: ...


class Reaper(Protocol):
    async def schedule(self, cluster_id: str) -> float | None: ...


class Launcher(Protocol):
    """Ray's cluster launcher (actors.backends.launcher.RayClusterLauncher, or a fake in tests)."""

    async def create(self, config: dict) -> None: ...

    async def teardown(self, config: dict) -> None: ...


class ClusterManager(BuyerApi, NodeProviderApi):
    """Plain class with the logic; `actors.actor_classes` turns it into a detached actor."""

    def __init__(
        self,
        store: cstore.ClusterStore,
        settings: PlatformSettings,
        *,
        registry: Registry,
        launcher: Launcher,
        reaper: Reaper | None = None,
        clock: Callable[[], float] = time.time,
        metrics: metrics_mod.Metrics | None = None,
        observer: node_observer.Observer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        secrets: platform_secrets.Secrets | None = None,
    ):
        self._store = store
        self._secrets = secrets or platform_secrets.for_settings(settings)
        self._metrics = metrics or metrics_mod.NullMetrics()
        self._settings = settings
        self._registry = registry
        self._launcher = launcher
        self._reaper = reaper
        self._clock = clock
        self._quotas = quota_book.QuotaBook(store, settings, clock)
        # Joined (billed) = seen ALIVE in the cluster's own GCS, never a command's exit status.
        self._joins = joins_mod.JoinWatcher(
            store, self._secrets.cluster_token, observer or node_observer.NodeObserver(), clock=clock, sleep=sleep
        )
        self._logs = cluster_logs.ClusterLogs(
            store,
            max_bytes_per_cluster=settings.cluster_logs_max_bytes,
            retention_s=settings.cluster_logs_retention_s,
            clock=clock,
        )
        self._tokens: auth.TokenIssuer | None = None
        self._placement_lock = store.placement_lock()  # placements see each other's, in every process
        self._machines = machine_index.MachineIndex()  # machines and leases; lease ids and liveness read fresh
        self._gpu_checks = gpu_checks.GpuChecker(
            store, settings, registry=registry, placement_lock=self._placement_lock, clock=clock
        )
        self._tasks: dict[str, asyncio.Task] = {}  # cluster id → its provisioning or teardown
        self._opening_ahead: dict[str, asyncio.Task] = {}  # cluster id → its workers opening while the head starts
        self._last_sweep = 0.0
        self._backends = backend.backends(settings, self._tokens_or_fail)

    def _tokens_or_fail(self) -> auth.TokenIssuer:
        if self._tokens is None:
            raise RuntimeError("cluster manager not started")
        return self._tokens

    def _backend(self, spec: ClusterSpec) -> backend.Backend:
        return self._backends[spec.backend]

    def background_work(self) -> dict[str, asyncio.Task]:
        """The provisioning or teardown running for each cluster id (a copy)."""
        return dict(self._tasks)

    async def start(self) -> None:
        """Recovers: a launch in flight when the manager died cannot be resumed safely, so it is
        failed with a reason and torn down; an interrupted teardown is finished."""
        await self._store.conn()
        self._tokens = auth.TokenIssuer(await self._registry.signing_secret(), clock=self._clock)
        await self._gpu_checks.recover()
        await self._load_machines()  # after: recover gives machines their first GPU status
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

    async def run_gpu_check_loop(self) -> None:
        """Starts the GPU checks that are due (actors/machines/gpu_checks.py); never dies."""
        while True:
            await asyncio.sleep(self._settings.gpu_check_interval_s)
            try:
                await self._gpu_checks.run_once()
            except Exception:
                logger.exception("GPU check step failed")

    async def reconcile_once(self) -> None:
        rows = await self._store.clusters_with_status(S.PROVISIONING, S.RUNNING, S.DEGRADED)
        # First: running never precedes a join. Clusters it read and had nothing to ask are not read again.
        leases_read = await self._joins.observe_all([row["id"] for row in rows])
        now = self._clock()
        liveness = await self._registry.lease_liveness()
        for row in rows:
            try:
                await self._reconcile_cluster(row, now, liveness, leases_read.get(row["id"]))
            except Exception:
                logger.exception("reconcile of cluster %s failed", row["id"])
        self._metrics.cluster_states(await self._store.count_clusters_by_status())
        if now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            await self.sweep()
        if now - (self._machines.loaded_at or 0.0) >= MACHINE_RELOAD_S:
            await self._load_machines(beside=True)

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
        try:
            await self._logs.purge()
        except Exception:
            logger.exception("purging old cluster logs failed")
        removed = cluster_files.remove_stale_launcher_files(
            self._settings.state_dir / cluster_files.LAUNCHER_TMP, older_than_s=SWEEP_INTERVAL_S
        )
        if closed or removed:
            logger.info("sweep: closed %d stray lease(s), removed %d launcher file(s)", closed, removed)
        return {"leases_closed": closed, "launcher_files_removed": removed}

    async def _reconcile_cluster(
        self, row: dict, now: float, liveness: dict | None = None, leases: list[dict] | None = None
    ) -> None:
        """One step of lifecycle.decide for the cluster, carried out in order. liveness: the registry's
        lease_liveness (silence cutoff, leases each agent holds); asked for when not given. leases: the
        cluster's, read in this step already; read when not given."""
        watches_leases = self._backend(ClusterSpec.model_validate_json(row["spec"])).watches_leases
        machines, held = {}, {}
        if not (watches_leases and row["expires_at"] + EXPIRY_BACKSTOP_S > now):
            leases = []
        else:
            if leases is None:
                leases = await self._store.leases_of(row["id"])
            live = [l["machine_id"] for l in leases if domain.LeaseStatus(l["status"]).holds_capacity()]
            if liveness is None:
                liveness = await self._registry.lease_liveness()
            machines = await self._store.machine_statuses(live, liveness["silence_cutoff"])
            held = liveness["held"]
        for action in lifecycle.decide(
            row,
            leases,
            machines,
            now,
            watch_leases=watches_leases,
            provision_timeout_s=self._settings.provision_timeout_s,
            expiry_backstop_s=EXPIRY_BACKSTOP_S,
            held=held,
        ):
            if not await self._act(row, action, now):
                return

    async def _act(self, row: dict, action: lifecycle.Action, now: float) -> bool:
        """Carries out one action; False when the step ends there."""
        cid = row["id"]
        if isinstance(action, lifecycle.Expire):  # the ExpiryReaper missed it (e.g. it is restarting)
            await self.expire(cid, action.deadline)
            return False
        if isinstance(action, lifecycle.Fail):
            await self._fail(cid, action.reason)
            return False
        if isinstance(action, lifecycle.LoseLease):
            if await self._store.end_lease(action.lease_id, domain.LeaseStatus.LOST, now):
                await self._event(
                    cid, domain.EventKind.LEASE_LOST, f"{action.role} node {action.lease_id} lost: {action.why}"
                )
                if action.fail_reason:
                    await self._fail(cid, action.fail_reason)
                    return False
            return True
        if await self._store.set_cluster_status(cid, action.to, now, reason=action.reason, only_from=(action.from_,)):
            if (action.from_, action.to) == (S.PROVISIONING, S.RUNNING):
                self._metrics.provisioned(now - row["created_at"])
            if action.clear_reason:
                await self._store.clear_reason(cid)
            await self._event(cid, action.event_kind, action.message)
        return True

    async def note_no_capacity(self, cluster_id: str, detail: str) -> None:
        row = await self._store.get_cluster(cluster_id)
        if row and row["status"] == S.DEGRADED.value and detail not in (row["reason"] or ""):
            reason = f"{row['reason'].split(';')[0]}; no matching machine is free: {detail}"
            await self._store.set_cluster_status(cluster_id, S.DEGRADED, self._clock(), reason=reason)

    # --- lifetimes (the ExpiryReaper calls these) ----------------------------------------

    async def expire(self, cluster_id: str, deadline: float) -> bool:
        late = self._clock() - deadline
        return await self._begin_teardown(
            cluster_id, S.EXPIRED, f"its lifetime ended (teardown started {late:.3f} s after the deadline)"
        )

    async def warn_expiry(self, cluster_id: str, deadline: float) -> None:
        await self._event(
            cluster_id,
            domain.EventKind.EXPIRY_WARNING,
            f"expires in {deadline - self._clock():.0f} s; POST /v1/clusters/{cluster_id}/extend to keep it",
        )

    async def _schedule_expiry(self, cluster_id: str) -> None:
        if self._reaper is None:
            return
        try:
            await self._reaper.schedule(cluster_id)
        except Exception:  # the reaper reloads every deadline from the database when it (re)starts
            logger.exception("could not reach the expiry reaper for %s", cluster_id)

    # --- steps shared by the buyer and node-provider APIs --------------------------------

    async def _load_machines(self, beside: bool = False) -> None:
        """Reads every machine into the index. beside: into a new index, built in a thread while placements
        go on with the old one (a 100,000-machine load takes seconds), which it then replaces; what changed
        meanwhile is read again by the next placement (rows since the load began, lease ids every time)."""
        now = self._clock()
        await self._read_leases()  # first: the machines are filed once, by what their leases leave free
        rows = await self._store.placement_machines()
        if not beside:
            self._machines.load(rows, now)
            return
        fresh = machine_index.MachineIndex().with_leases_of(self._machines)
        await asyncio.to_thread(fresh.load, rows, now)
        self._machines = fresh

    async def _capacities(
        self, cluster_id: str, requests: list[placement.NodeRequest], avoid: frozenset[str] = frozenset()
    ) -> list[placement.MachineCapacity]:
        """The machines placement chooses among for these requests (actors.machines.machine_index: a few, not every
        online one). Which leases hold capacity and which machines may take none now are read fresh."""
        now = self._clock()
        if self._machines.synced_at is None:
            await self._load_machines()
        else:
            changed = await self._store.placement_machines(self._machines.synced_at - MACHINE_CHANGE_MARGIN_S)
            self._machines.update(changed, now)
        unplaceable = await self._store.unplaceable_machine_ids(self._settings.online_cutoff(now))
        await self._read_leases()
        return self._machines.candidates(requests, unplaceable, now, cluster_id, avoid)

    async def _read_leases(self) -> None:
        active = await self._store.active_lease_ids()
        self._machines.set_leases(active, await self._store.lease_holdings(self._machines.missing_leases(active)))

    async def _all_capacities(self, cluster_id: str) -> list[placement.MachineCapacity]:
        """Every online machine's (what a 409 describes)."""
        now = self._clock()
        machines = await self._store.online_machines(self._settings.online_cutoff(now))
        for m in machines:  # fresh rows of this call: scored in place, not copied
            m["reliability"] = reputation.of_machine(m, now)
        await self._read_leases()
        active = self._machines.lease_holdings()
        caps = placement.capacities(machines, active)
        mine = collections.Counter(l["machine_id"] for l in active if l["cluster_id"] == cluster_id)
        for cap in caps:
            cap.leases_of_cluster = mine[cap.machine_id]
        return caps

    async def _decide(
        self,
        cluster_id: str,
        requests: list[placement.NodeRequest],
        decide: Callable[[list[placement.MachineCapacity]], T],
        avoid: frozenset[str] = frozenset(),
    ) -> T:
        """decide (placement.place or .replacement) among the index's candidates; raises
        placement.InsufficientCapacity describing every online machine when they have no room."""
        try:
            return decide(await self._capacities(cluster_id, requests, avoid))
        except placement.InsufficientCapacity:
            pass  # the candidates hold the best machines for each request: short there is short everywhere
        return decide(await self._all_capacities(cluster_id))  # ... and the answer names what every machine has

    async def _place(self, cluster_id: str, requests: list[placement.NodeRequest]) -> list[placement.Assignment]:
        try:
            return await self._decide(cluster_id, requests, lambda caps: placement.place(caps, requests))
        except placement.InsufficientCapacity as exc:
            raise errors.Conflict(str(exc), available=exc.available) from None

    async def _open_node(
        self, cluster: dict, lease: dict, request: placement.NodeRequest, node_type: str, tags: dict
    ) -> dict:
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
                    assignment = await self._decide(
                        cid,
                        [request],
                        lambda caps: placement.replacement(caps, request, set(failed)),
                        avoid=frozenset(failed),
                    )
                except placement.InsufficientCapacity as exc:
                    await self._event(
                        cid,
                        domain.EventKind.NODE_RETRY_FAILED,
                        f"{request.role} node: no machine to retry on after attempt {attempt}: {exc}",
                    )
                    raise errors.Conflict(
                        f"{request.role} node of cluster {cid}: machine(s) {', '.join(failed)} "
                        f"could not open it and no other fits: {exc}"
                    ) from None
                retry = placement.lease_row(assignment)
                await self._store.add_leases(cid, [retry], self._clock())
            lease = await self._store.get_lease(retry["id"])
            await self._event(
                cid,
                domain.EventKind.NODE_RETRY,
                f"{request.role} node: attempt {attempt + 1} of "
                f"{NODE_OPEN_ATTEMPTS} on machine {lease['machine_id']} as node {lease['id']} "
                f"(failed so far: {', '.join(failed)})",
            )
        raise errors.Conflict(
            f"{request.role} node of cluster {cid} could not be opened in {NODE_OPEN_ATTEMPTS} "
            f"attempts (machines {', '.join(failed)}); see the cluster's events"
        )

    async def _open_lease(self, cluster: dict, lease: dict, node_type: str, tags: dict, attempt: int) -> dict | None:
        """One try: the opened lease, or None when the machine could not open it (the lease is then lost)."""
        machine = await self._store.machine_summary(lease["machine_id"])
        head = next(
            (
                l
                for l in await self._store.leases_of(cluster["id"])
                if l["role"] == N.HEAD and l["status"] == domain.LeaseStatus.OPEN.value
            ),
            None,
        )
        payload = protocol.LeaseOpen(
            lease_id=lease["id"],
            cluster_id=cluster["id"],
            role=lease["role"],
            gpu_indices=lease["gpus"],
            resources={f"provider_{lease['machine_id']}": 1.0},
            labels=views.node_labels(cluster["id"], lease, machine),
            ray_auth_token=await self._secrets.cluster_token(cluster["id"]),
            head_gcs_port=head["ports"]["gcs"] if head and lease["role"] == N.WORKER else None,
            cpus=lease["cpus"],
            image=ClusterSpec.model_validate_json(cluster["spec"]).image,
        )
        result = await self._registry.send_work(
            lease["machine_id"], protocol.LEASE_OPEN, payload.model_dump(), timeout_s=LEASE_OPEN_TIMEOUT_S
        )
        if not result.get("ok"):
            await self._store.end_lease(lease["id"], domain.LeaseStatus.LOST, self._clock())
            await self._event(
                cluster["id"],
                domain.EventKind.LEASE_FAILED,
                f"attempt {attempt} of {NODE_OPEN_ATTEMPTS}: machine {lease['machine_id']} could "
                f"not open {lease['role']} node {lease['id']}: {views.tail(result.get('output', ''))}",
            )
            return None
        opened = protocol.LeaseOpened.model_validate(result["data"])
        if not await self._store.open_lease(
            lease["id"], node_type=node_type, tags=tags, ports=opened.ports, node_ip=opened.node_ip, now=self._clock()
        ):
            # The cluster ended while the agent opened it: the teardown saw a reservation and closed nothing
            # on the machine, so the node just opened is closed here, and never counted as open.
            await self._close_opened_too_late(cluster["id"], lease)
            raise errors.Conflict(
                f"cluster {cluster['id']} ended while its {lease['role']} node {lease['id']} "
                "was opening: the node was closed again"
            )
        await self._event(
            cluster["id"],
            domain.EventKind.NODE_OPENED,
            f"{lease['role']} node {lease['id']} opened on machine {lease['machine_id']} ({opened.node_ip})",
        )
        return await self._store.get_lease(lease["id"])

    async def _close_opened_too_late(self, cluster_id: str, lease: dict) -> None:
        if await self._close_on_machine(cluster_id, lease):
            await self._event(
                cluster_id,
                domain.EventKind.NODE_CLOSED,
                f"{lease['role']} node {lease['id']} was opened after the cluster ended: released",
            )

    async def _close_on_machine(self, cluster_id: str, lease: dict) -> bool:
        """Asks the lease's agent to close it (its logs are kept); False, with an event, when that failed."""
        payload = protocol.LeaseClose(lease_id=lease["id"]).model_dump()
        result = await self._registry.send_work(
            lease["machine_id"], protocol.LEASE_CLOSE, payload, timeout_s=LEASE_CLOSE_TIMEOUT_S
        )
        if not result.get("ok"):
            # The agent cleans up leases the platform no longer knows when it returns (its heartbeat's
            # answer names them stale).
            await self._event(
                cluster_id,
                domain.EventKind.LEASE_CLOSE_FAILED,
                f"node {lease['id']}: {views.tail(result.get('output', ''))}",
            )
            return False
        await self._keep_logs(cluster_id, lease, result)
        return True

    async def _close_lease(self, cluster_id: str, lease: dict) -> None:
        if lease["status"] == domain.LeaseStatus.OPEN.value:
            await self._close_on_machine(cluster_id, lease)
        if await self._store.end_lease(lease["id"], domain.LeaseStatus.CLOSED, self._clock()):
            if lease["status"] == domain.LeaseStatus.OPEN.value:
                await self._event(
                    cluster_id, domain.EventKind.NODE_CLOSED, f"{lease['role']} node {lease['id']} released"
                )

    async def _keep_logs(self, cluster_id: str, lease: dict, result: dict) -> None:
        try:
            kept = await self._logs.keep(cluster_id, lease, (result.get("data") or {}).get("logs"))
        except Exception:
            logger.exception("keeping the logs of lease %s failed", lease["id"])
            return
        if kept:
            await self._event(
                cluster_id,
                domain.EventKind.LOGS_KEPT,
                f"{kept} log file(s) of {lease['role']} node {lease['id']} kept: GET /v1/clusters/{cluster_id}/logs",
            )

    async def _provision(self, cluster_id: str) -> None:
        row = await self._store.get_cluster(cluster_id)
        if not await self._store.set_cluster_status(cluster_id, S.PROVISIONING, self._clock(), only_from=(S.PENDING,)):
            return
        await self._event(
            cluster_id, domain.EventKind.PROVISIONING, "starting the head node with the Ray cluster launcher"
        )
        try:
            await asyncio.wait_for(
                self._launcher.create(await self._launcher_config(row)), timeout=self._settings.provision_timeout_s
            )
        except Exception as exc:
            await self._fail(cluster_id, f"the cluster launcher failed: {views.describe(exc)}")
            return
        spec = ClusterSpec.model_validate_json(row["spec"])
        await self._event(
            cluster_id,
            domain.EventKind.HEAD_READY,
            f"head node up; its autoscaler is starting {spec.num_workers} worker(s)",
        )
        if self._backend(spec).running_once_head_is_up and await self._store.set_cluster_status(
            cluster_id, S.RUNNING, self._clock(), only_from=(S.PROVISIONING,)
        ):
            await self._event(
                cluster_id,
                domain.EventKind.RUNNING,
                "running: the EC2 head is up; workers join through the sub-cluster's own autoscaler",
            )

    async def _begin_teardown(self, cluster_id: str, final: S, reason: str) -> bool:
        if await self._store.set_cluster_status(
            cluster_id, S.TERMINATING, self._clock(), ending_as=final, only_from=S.active()
        ):
            await self._event(cluster_id, domain.EventKind.TERMINATING, f"tearing down: {reason}")
            provisioning = self._tasks.pop(cluster_id, None)
            if provisioning is not None:
                provisioning.cancel()
            self._spawn(cluster_id, self._teardown(cluster_id, final, reason))
            return True
        return False

    async def _fail(self, cluster_id: str, reason: str) -> None:
        logger.warning("cluster %s failed: %s", cluster_id, reason)
        await self._event(cluster_id, domain.EventKind.FAILED, reason)
        if await self._store.set_cluster_status(
            cluster_id, S.TERMINATING, self._clock(), reason=reason, ending_as=S.FAILED, only_from=S.active()
        ):
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
        had_nodes = self._backend(ClusterSpec.model_validate_json(row["spec"])).needs_launcher_teardown(leases)
        # All at once: the head's autoscaler cannot replace a worker meanwhile, since the cluster is
        # terminating and create_nodes refuses.
        await asyncio.gather(*(self._close_lease(cluster_id, l) for l in leases))
        self._metrics.released(self._clock() - started)
        await self._event(
            cluster_id, domain.EventKind.RELEASED, f"all nodes released in {self._clock() - started:.1f} s"
        )
        if had_nodes:
            try:
                await asyncio.wait_for(
                    self._launcher.teardown(await self._launcher_config(row)), timeout=TEARDOWN_TIMEOUT_S
                )
            except Exception as exc:
                await self._event(
                    cluster_id, domain.EventKind.TEARDOWN_WARNING, f"launcher teardown: {views.describe(exc)}"
                )
        await self._store.set_cluster_status(cluster_id, final, self._clock(), reason=reason)
        await self._event(
            cluster_id,
            domain.EventKind.reached(final),
            f"{final.value} {self._clock() - started:.1f} s after the teardown began",
        )

    async def _launcher_config(self, row: dict) -> dict:
        spec = ClusterSpec.model_validate_json(row["spec"])
        backend = self._backend(spec)
        if backend.names_token_file:  # the config names a file: make sure this node has it
            await self._secrets.cluster_token_file(row["id"])
        return backend.launcher_config(row, spec, self._clock())

    def _spawn(self, cluster_id: str, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[cluster_id] = task

        def done(t: asyncio.Task) -> None:
            if self._tasks.get(cluster_id) is t:
                self._tasks.pop(cluster_id, None)
            if not t.cancelled() and t.exception() is not None:
                logger.error("background work of cluster %s failed", cluster_id, exc_info=t.exception())

        task.add_done_callback(done)

    async def _event(self, cluster_id: str, kind: domain.EventKind, message: str) -> None:
        logger.info("cluster %s: %s", cluster_id, message)
        await self._store.add_event(cluster_id, kind, message, self._clock())
