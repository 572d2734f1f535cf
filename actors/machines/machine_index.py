"""Placement's in-memory view of the machines: what each one is (GPUs, CPUs, prices, reliability inputs)
and what its leases leave free, kept sorted the ways placement ranks machines, so that a request among
10,000 machines looks at a few dozen of them instead of reading and scoring every row.

Pure (no I/O): the ClusterManager loads it from the store, feeds it the rows changed since (the
`changed_at` column) and the ids of the leases holding capacity, and asks it, under the placement lock,
for the candidates of a request given the machines not online right now. Lease ids and liveness are read
fresh each time, so a reservation still sees every other's, in every process.
"""

from __future__ import annotations

import bisect
import collections
import heapq
from collections.abc import Iterable
from typing import Any

from actors.machines import placement, reputation
from dcl_core import domain

# placement.rank of a machine with none of this cluster's nodes on it, by request kind, from its free capacity.
_WORKER_GPU, _WORKER_CPU, _HEAD = "worker_gpu", "worker_cpu", "head"
_ORDERS = (_WORKER_GPU, _WORKER_CPU, _HEAD)


# A machine's place in one order (price or free GPUs first, then free CPUs, then its id).
SortKey = tuple[float, int, int, str] | tuple[int, int, str]
# Machines whose leases run the same Ray and Python, with the same GPU model and free GPUs.
Bucket = tuple[domain.LeaseRuntime, str | None, int]


def _key(order: str, row: dict[str, Any], free_gpus: int, free_cpus: int) -> SortKey:
    if order == _WORKER_GPU:
        return (row["price_per_gpu_hour"], -free_gpus, -free_cpus, row["id"])
    if order == _WORKER_CPU:
        return (row["price_per_cpu_hour"], -free_gpus, -free_cpus, row["id"])
    return (free_gpus, -free_cpus, row["id"])


def _may_fit(bucket: Bucket, r: placement.NodeRequest) -> bool:
    runtime, model, free_gpus = bucket
    fits_gpus = not r.gpus or (free_gpus >= r.gpus and (not r.gpu_model or model == r.gpu_model))
    return fits_gpus and r.runs_on(runtime)


def _order_of(request: placement.NodeRequest) -> str:
    if request.role == domain.NodeRole.HEAD:
        return _HEAD
    return _WORKER_GPU if request.gpus else _WORKER_CPU


class MachineIndex:
    """Machines rows by id (as ClusterStore.placement_machines returns them, each with `as_of`: when its
    reliability inputs were read), the leases holding capacity (by id: what a lease holds never changes
    while it lives), and every machine's free capacity, kept sorted in buckets by what its leases run (Ray
    and Python), GPU model and free GPUs
    as placement.rank orders them for a GPU worker, a CPU worker and a head. A lease or a row that changes
    moves its machine in the sorted orders (a bisection), so a placement costs the same among 100,000
    machines and 10,000 leases as among 100."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, Any]] = {}
        self._leases: dict[str, dict[str, Any]] = {}  # lease id → holding (machine_id, cluster_id, gpus, cpus)
        self._by_machine: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self._by_cluster: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        # (Ray and Python, GPU model, free GPUs) → each order → the keys of its machines, sorted.
        self._buckets: dict[Bucket, dict[str, list[SortKey]]] = {}
        self._placed: dict[
            str, tuple[Bucket, dict[str, SortKey]]
        ] = {}  # machine id → (bucket, {order: key}) it is filed under
        self.loaded_at: float | None = None  # when the whole table was last read
        self.synced_at: float | None = None  # when the changed rows were last read

    def __len__(self) -> int:
        return len(self._rows)

    # --- keeping it --------------------------------------------------------------------------

    def load(self, rows: Iterable[dict[str, Any]], now: float) -> None:
        """Every machine, read at `now` (the leases known are kept)."""
        self._rows = {}
        for row in rows:
            row["as_of"] = now
            self._rows[row["id"]] = row
        self._buckets, self._placed = {}, {}
        for mid in self._rows:
            self._file(mid, sort=False)
        for orders in self._buckets.values():
            for keys in orders.values():
                keys.sort()
        self.loaded_at = self.synced_at = now

    def update(self, rows: Iterable[dict[str, Any]], now: float) -> None:
        """Rows changed since the last sync (registered, re-registered, a node ended on them), read at `now`."""
        for row in rows:
            old = self._rows.get(row["id"])
            if old is not None and all(old[k] == v for k, v in row.items()):
                old["as_of"] = now
                continue
            row["as_of"] = now
            self._unfile(row["id"])
            self._rows[row["id"]] = row
            self._file(row["id"])
        self.synced_at = now

    def with_leases_of(self, other: MachineIndex) -> MachineIndex:
        """This (empty) index, knowing the leases another knows: to load afresh beside it, then replace it."""
        for lease_id, row in other._leases.items():
            self._leases[lease_id] = row
            self._by_machine[row["machine_id"]][lease_id] = row
            self._by_cluster[row["cluster_id"]][lease_id] = row
        return self

    def missing_leases(self, active_ids: list[str]) -> list[str]:
        """The active leases whose holdings are not known yet."""
        return [i for i in active_ids if i not in self._leases]

    def set_leases(self, active_ids: list[str], new: list[dict[str, Any]]) -> None:
        """The leases holding capacity now, given the holdings of those missing_leases named."""
        active = set(active_ids)
        touched = set()
        for lease_id in [i for i in self._leases if i not in active]:
            gone = self._leases.pop(lease_id)
            del self._by_machine[gone["machine_id"]][lease_id]
            del self._by_cluster[gone["cluster_id"]][lease_id]
            touched.add(gone["machine_id"])
        for row in new:
            if row["id"] in active and row["id"] not in self._leases:
                self._leases[row["id"]] = row
                self._by_machine[row["machine_id"]][row["id"]] = row
                self._by_cluster[row["cluster_id"]][row["id"]] = row
                touched.add(row["machine_id"])
        for mid in touched:
            if not self._by_machine[mid]:
                del self._by_machine[mid]
            if mid in self._rows:
                self._unfile(mid)
                self._file(mid)
        for cid in [c for c, held in self._by_cluster.items() if not held]:
            del self._by_cluster[cid]

    def lease_holdings(self) -> list[dict[str, Any]]:
        return list(self._leases.values())

    def _free(self, mid: str) -> tuple[list[int], int]:
        row, held = self._rows[mid], self._by_machine.get(mid)
        if not held:
            return list(range(row["gpus"])), row["cpus"]
        used = {g for lease in held.values() for g in lease["gpus"]}
        return [i for i in range(row["gpus"]) if i not in used], row["cpus"] - sum(l["cpus"] for l in held.values())

    def _file(self, mid: str, sort: bool = True) -> None:
        row = self._rows[mid]
        gpus, cpus = self._free(mid)
        bucket = (placement.runtime_of(row), row["gpu_model"] if row["gpus"] else None, len(gpus))
        orders = self._buckets.setdefault(bucket, {order: [] for order in _ORDERS})
        keys = {order: _key(order, row, len(gpus), cpus) for order in _ORDERS}
        for order, key in keys.items():
            (bisect.insort if sort else list.append)(orders[order], key)
        self._placed[mid] = (bucket, keys)

    def _unfile(self, mid: str) -> None:
        placed = self._placed.pop(mid, None)
        if placed is not None:
            bucket, keys = placed
            for order, key in keys.items():
                sorted_keys = self._buckets[bucket][order]
                del sorted_keys[bisect.bisect_left(sorted_keys, key)]

    # --- asking it ---------------------------------------------------------------------------

    def reliability(self, row: dict[str, Any], now: float) -> float:
        """actors.machines.reputation's score; the time since the row was read counts as online (only online
        machines are candidates; a gap the registry would not count is undone at the next load)."""
        online = (row["online_seconds"] or 0.0) + max(0.0, now - row["as_of"])
        return reputation.score(
            online_seconds=online,
            registered_at=row["registered_at"],
            now=now,
            completed=row["leases_completed"] or 0,
            lost=row["leases_lost"] or 0,
        )

    def capacity(self, mid: str, now: float, leases_of_cluster: int = 0) -> placement.MachineCapacity:
        row = self._rows[mid]
        gpus, cpus = self._free(mid)
        return placement.MachineCapacity(
            mid,
            row["provider"],
            row["gpu_model"] if row["gpus"] else None,
            gpus,
            cpus,
            row["price_per_gpu_hour"],
            row["price_per_cpu_hour"],
            leases_of_cluster,
            self.reliability(row, now),
            gpus_verified=row.get("gpu_check") == domain.GpuVerification.VERIFIED.value,
            runtime=placement.runtime_of(row),
        )

    def candidates(
        self,
        requests: list[placement.NodeRequest],
        unplaceable: set[str],
        now: float,
        cluster_id: str,
        avoid: frozenset[str] = frozenset(),
    ) -> list[placement.MachineCapacity]:
        """The machines among which placement.place makes the same choice as among every placeable machine
        (`unplaceable`: not online, or held by a GPU check):
        those with this cluster's nodes on them (placement spreads away from them), and for each kind of
        request the best len(requests) of the others that fit it, along the sorted orders (no more can be
        taken by the requests placed before it); a request whose cluster has not chosen its Ray and Python yet
        counts for each runtime it may run on (placement.place tries each). Machines in `avoid` are not
        counted among the best but come along (placement.replacement falls back on them)."""
        want = len(requests) + len(avoid)
        mine = collections.Counter(l["machine_id"] for l in self._by_cluster.get(cluster_id, {}).values())
        chosen = {
            mid: self.capacity(mid, now, n) for mid, n in mine.items() if mid in self._rows and mid not in unplaceable
        }
        for mid in avoid:
            if mid in self._rows and mid not in unplaceable and mid not in chosen:
                chosen[mid] = self.capacity(mid, now)
        runtimes = {bucket[0] for bucket in self._buckets}
        for r in self._per_runtime(requests, runtimes):
            order, found = _order_of(r), 0
            for key in heapq.merge(*(orders[order] for bucket, orders in self._buckets.items() if _may_fit(bucket, r))):
                mid = key[-1]
                if mid in mine or mid in avoid or mid in unplaceable:
                    continue
                cap = chosen.get(mid) or self.capacity(mid, now)
                if placement.fits(cap, r):
                    chosen[mid] = cap
                    found += 1
                    if found >= want:
                        break
        return list(chosen.values())

    @staticmethod
    def _per_runtime(
        requests: list[placement.NodeRequest], runtimes: set[domain.LeaseRuntime]
    ) -> list[placement.NodeRequest]:
        """Each distinct request, pinned to each runtime it may run on where its cluster has not chosen one."""
        found: dict[placement.NodeRequest, None] = {}
        for r in requests:
            if r.runtime is not None:
                found[r] = None
            else:
                found.update((r.pinned(rt), None) for rt in sorted(runtimes) if r.runs_on(rt))
        return list(found)
