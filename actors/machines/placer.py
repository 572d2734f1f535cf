"""Placer: where a cluster's nodes go. Placement's pure decisions over the machine index, which it keeps
in step with the database (rows changed since its last read; which leases hold capacity, read fresh)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TypeVar

from actors.db import cluster_store as cstore
from actors.machines import machine_index, placement, reputation
from actors.settings import PlatformSettings
from dcl_core import errors

T = TypeVar("T")
# The machine index reads again the rows changed since its last read, this much earlier too: a write's time is
# taken before it commits (it may wait for the database's lock), so a later read must still catch it. Longer
# would read a whole fleet again at every placement for that long after it registered.
MACHINE_CHANGE_MARGIN_S = 5.0
# The whole table this often: uptime accrues with heartbeats, which mark nothing, and a write that took longer
# than the margin to commit is caught here.
MACHINE_RELOAD_S = 60.0


class Placer:
    def __init__(self, store: cstore.ClusterStore, settings: PlatformSettings, clock: Callable[[], float]):
        self._store = store
        self._settings = settings
        self._clock = clock
        self._machines = machine_index.MachineIndex()  # machines and leases; lease ids and liveness read fresh

    async def load(self, beside: bool = False) -> None:
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

    async def reload_if_due(self, now: float) -> None:
        if now - (self._machines.loaded_at or 0.0) >= MACHINE_RELOAD_S:
            await self.load(beside=True)

    async def place(self, cluster_id: str, requests: list[placement.NodeRequest]) -> list[placement.Assignment]:
        """Machines for the requests; Conflict naming what every online machine has when they do not fit."""
        try:
            return await self.decide(cluster_id, requests, lambda caps: placement.place(caps, requests))
        except placement.InsufficientCapacity as exc:
            raise errors.Conflict(str(exc), available=exc.available) from None

    async def decide(
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

    async def _capacities(
        self, cluster_id: str, requests: list[placement.NodeRequest], avoid: frozenset[str] = frozenset()
    ) -> list[placement.MachineCapacity]:
        """The machines placement chooses among for these requests (actors.machines.machine_index: a few, not
        every online one). Which leases hold capacity and which machines may take none now are read fresh."""
        now = self._clock()
        if self._machines.synced_at is None:
            await self.load()
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
