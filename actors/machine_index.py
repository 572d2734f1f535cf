"""Placement's in-memory view of the machines: what each one is (GPUs, CPUs, prices, reliability inputs),
kept sorted the ways placement ranks machines, so that a request among 10,000 machines looks at a few
dozen of them instead of reading and scoring every row.

Pure (no I/O): the ClusterManager loads it from the store, feeds it the rows changed since (the
`changed_at` column) and asks it, under the placement lock, for the candidates of a request given the
leases that hold capacity and the machines not online right now (both read fresh from the store each
time, so a reservation still sees every other's, in every process).
"""

from __future__ import annotations

import bisect
import collections
import heapq
from typing import Iterable

from actors import placement, reputation
from dcl_core import domain

# placement.rank of a machine nobody leases (all of it free, none of the cluster's nodes on it), by request kind.
_WORKER_GPU, _WORKER_CPU, _HEAD = "worker_gpu", "worker_cpu", "head"


def _key(order: str, row: dict) -> tuple:
    if order == _WORKER_GPU:
        return (row["price_per_gpu_hour"], -row["gpus"], -row["cpus"], row["id"])
    if order == _WORKER_CPU:
        return (row["price_per_cpu_hour"], -row["gpus"], -row["cpus"], row["id"])
    return (row["gpus"], -row["cpus"], row["id"])


_ORDERS = (_WORKER_GPU, _WORKER_CPU, _HEAD)


def _bucket(row: dict) -> tuple:
    return (row["gpu_model"] if row["gpus"] else None, row["gpus"])


def _may_fit(bucket: tuple, r: placement.NodeRequest) -> bool:
    model, gpus = bucket
    return not r.gpus or (gpus >= r.gpus and (not r.gpu_model or model == r.gpu_model))


def _order_of(request: placement.NodeRequest) -> str:
    if request.role == domain.NodeRole.HEAD:
        return _HEAD
    return _WORKER_GPU if request.gpus else _WORKER_CPU


def _fits_unleased(row: dict, r: placement.NodeRequest) -> bool:
    """Whether a machine with no lease on it could take the request (its reliability aside)."""
    if r.gpus and (row["gpus"] < r.gpus or (r.gpu_model and row["gpu_model"] != r.gpu_model)):
        return False
    if row["cpus"] < r.cpus:
        return False
    price = row["price_per_gpu_hour"] if r.gpus else row["price_per_cpu_hour"]
    return r.max_price is None or price <= r.max_price


class MachineIndex:
    """Machines rows by id (as ClusterStore.placement_machines returns them), each with `as_of`, the time
    its reliability inputs were read, and three sorted orders of them: placement.rank of an unleased
    machine for a GPU worker, a CPU worker and a head."""

    def __init__(self) -> None:
        self._rows: dict[str, dict] = {}
        # (GPU model, GPU count) → each order → its machines' keys, sorted: a request merges the buckets that fit it.
        self._buckets: dict[tuple, dict[str, list[tuple]]] = {}
        self.loaded_at: float | None = None  # when the whole table was last read
        self.synced_at: float | None = None  # when the changed rows were last read
        self.revision = 0  # counts the changes of rows
        self._leased: tuple[tuple, list[placement.MachineCapacity]] = ((), [])  # (revisions, capacities)

    def __len__(self) -> int:
        return len(self._rows)

    def load(self, rows: Iterable[dict], now: float) -> None:
        """Every machine, read at `now`."""
        self._rows, self._buckets = {}, {}
        self.update(rows, now)
        self.loaded_at = now

    def update(self, rows: Iterable[dict], now: float) -> None:
        """Rows changed since the last sync (registered, re-registered, a node ended on them), read at `now`."""
        for row in rows:
            old = self._rows.get(row["id"])
            if old is not None and all(old[k] == v for k, v in row.items()):
                old["as_of"] = now
                continue
            row["as_of"] = now
            self.revision += 1
            if old is not None:
                orders = self._buckets[_bucket(old)]
                for order, keys in orders.items():
                    del keys[bisect.bisect_left(keys, _key(order, old))]
            orders = self._buckets.setdefault(_bucket(row), {order: [] for order in _ORDERS})
            for order, keys in orders.items():
                bisect.insort(keys, _key(order, row))
            self._rows[row["id"]] = row
        self.synced_at = now

    def reliability(self, row: dict, now: float) -> float:
        """actors.reputation's score; the time since the row was read counts as online (only online
        machines are candidates; a gap the registry would not count is undone at the next load)."""
        online = (row["online_seconds"] or 0.0) + max(0.0, now - row["as_of"])
        return reputation.score(online_seconds=online, registered_at=row["registered_at"], now=now,
                                completed=row["leases_completed"] or 0, lost=row["leases_lost"] or 0)

    def candidates(self, requests: list[placement.NodeRequest], holdings: "LeaseHoldings", offline: set[str],
                   now: float, cluster_id: str, avoid: frozenset[str] = frozenset()) -> list[placement.MachineCapacity]:
        """The machines among which placement.place makes the same choice as among every online machine:
        for each kind of request, the best len(requests) machines that fit it by placement.rank (no more
        can be taken by the requests placed before it), found among the leased machines (their free
        capacity is what the holdings leave) and along the sorted orders of the unleased ones (their free
        capacity is their size, and none of this cluster's nodes is on them). Machines in `avoid` are not
        counted among the best but come along (placement.replacement falls back on them). The
        capacities returned may be shared with later calls: placement never changes them (copy on pick)."""
        want = len(requests) + len(avoid)
        kinds = list(dict.fromkeys(requests))
        floor = any(r.min_reliability is not None for r in requests)
        mine = collections.Counter(h["machine_id"] for h in holdings.rows if h["cluster_id"] == cluster_id)
        leased = []
        for cap in self._leased_capacities(holdings):
            if cap.machine_id not in offline:
                cap.leases_of_cluster = mine.get(cap.machine_id, 0)
                if floor:
                    cap.reliability = self.reliability(self._rows[cap.machine_id], now)
                leased.append(cap)
        chosen = {c.machine_id: c for c in leased if c.machine_id in avoid}
        for r in kinds:
            fitting = [c for c in leased if len(c.free_gpus) >= r.gpus and c.free_cpus >= r.cpus and placement.fits(c, r)]
            chosen.update((c.machine_id, c) for c in heapq.nsmallest(want, fitting, key=placement.rank(r)))
        held = holdings.machines
        for mid in avoid - held:
            if mid in self._rows and mid not in offline:
                chosen[mid] = self._capacity(mid, now)
        for r in kinds:
            found = 0
            order = _order_of(r)
            for key in heapq.merge(*(orders[order] for bucket, orders in self._buckets.items() if _may_fit(bucket, r))):
                mid = key[-1]
                if mid in held or mid in avoid or mid in offline or not _fits_unleased(self._rows[mid], r):
                    continue
                cap = chosen.get(mid) or self._capacity(mid, now)
                if placement.fits(cap, r):
                    chosen[mid] = cap
                    found += 1
                    if found >= want:
                        break
        if not floor:
            for cap in chosen.values():
                cap.reliability = self.reliability(self._rows[cap.machine_id], now)
        return list(chosen.values())

    def _leased_capacities(self, holdings: "LeaseHoldings") -> list[placement.MachineCapacity]:
        """What the leases leave of each leased machine; built again only when leases or rows changed."""
        revisions = (holdings.version, self.revision)
        if self._leased[0] != revisions:
            rows = [self._rows[m] for m in holdings.machines if m in self._rows]
            self._leased = (revisions, placement.capacities(rows, holdings.rows))
        return self._leased[1]

    def _capacity(self, machine_id: str, now: float) -> placement.MachineCapacity:
        """An unleased machine's: all of it free."""
        cap = placement.capacities([self._rows[machine_id]], [])[0]
        cap.reliability = self.reliability(self._rows[machine_id], now)
        return cap


class LeaseHoldings:
    """What the leases holding capacity hold (machine, cluster, GPU indices, CPUs), by lease id: none of it
    changes while a lease lives, so only the ids of the active leases are read each time."""

    def __init__(self) -> None:
        self._known: dict[str, dict] = {}
        self.rows: list[dict] = []
        self.machines: set[str] = set()
        self.version = 0  # counts the changes of the set of leases

    def missing(self, active_ids: list[str]) -> list[str]:
        return [i for i in active_ids if i not in self._known]

    def set(self, active_ids: list[str], new: list[dict]) -> None:
        """The active leases, given the holdings of those `missing` named; forgets ended ones."""
        for row in new:
            self._known[row["id"]] = row
        if new or len(active_ids) != len(self._known):
            self._known = {i: self._known[i] for i in active_ids if i in self._known}
            self.rows = list(self._known.values())
            self.machines = {h["machine_id"] for h in self.rows}
            self.version += 1
