"""ProviderRegistry: provider machines, heartbeats, the agents' work channel; accounts are access/accounts.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from actors import metrics as metrics_mod
from actors.access import accounts, agent_keys, auth, platform_secrets
from actors.access import throttle as throttle_mod
from actors.db import database
from actors.db import store as store_mod
from actors.machines import gpu_verification, liveness, offers, reputation, work_channel
from actors.settings import PlatformSettings, launchable_ray_versions
from dcl_core import domain, errors, ids, protocol

logger = logging.getLogger(__name__)

# Who may call a machine's routes: its provider (a signed-in principal) or the machine's own agent key.
MachineCaller = auth.Principal | agent_keys.MachineKey
# A heartbeat whose write waits longer than this means the database is not recording heartbeats.
SLOW_BEAT_WRITE_S = 2.0
# A heartbeat gives up on a locked database after this (503, Retry-After): the agent beats again
# in a moment anyway, and a beat that waited out the store's 30 s only holds up the ones after it.
BEAT_LOCK_WAIT_S = 2.0


class ProviderRegistry:
    """Plain class with the logic; `actors.actor_classes` turns it into a detached actor."""

    def __init__(
        self,
        store: store_mod.Store,
        settings: PlatformSettings,
        *,
        clock: Callable[[], float] = time.time,
        hasher: auth.PasswordHasher | None = None,
        limiter: auth.LoginLimiter | None = None,
        throttle: throttle_mod.AuthThrottle | None = None,
        metrics: metrics_mod.Metrics | None = None,
        secrets: platform_secrets.Secrets | None = None,
    ):
        self._store = store
        self._metrics = metrics or metrics_mod.NullMetrics()
        self._settings = settings
        self._clock = clock
        self._accounts = accounts.Accounts(
            store,
            settings,
            secrets=secrets or platform_secrets.for_settings(settings),
            metrics=self._metrics,
            clock=clock,
            hasher=hasher,
            limiter=limiter,
            throttle=throttle,
        )
        self._work = work_channel.WorkChannel()
        # Silence means something only while the platform could hear: after the registry (re)starts, or
        # heartbeats could not be recorded (a locked database), agents get time to come back first.
        self._deaf_at = clock()
        self._beats_in_flight: dict[object, float] = {}
        # The leases each agent said it holds in its latest heartbeat: machine id → (received at, lease ids).
        self._held: dict[str, tuple[float, frozenset[str]]] = {}
        # Each machine's active key hash (None: it has none), read once from the database, kept on changes.
        self._key_hashes: dict[str, str | None] = {}

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from the database: schema, signing secret, the bootstrap admin."""
        await self._store.open()
        await self._accounts.start()
        self._deaf_at = self._clock()

    async def run_offline_sweeper(self) -> None:
        """Marks machines offline once they miss enough heartbeats; never dies."""
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s)
            try:
                for machine_id in await self._store.mark_silent_machines_offline(self._silence_cutoff()):
                    logger.info(
                        "machine %s missed %d heartbeats: offline", machine_id, self._settings.missed_heartbeats_offline
                    )
                online = await self._store.count_online_by_gpu_model(self._settings.online_cutoff(self._clock()))
                self._metrics.machines_online({model or "none": n for model, n in online.items()})
            except Exception:
                logger.exception("offline sweep failed")

    # --- accounts (actors/access/accounts.py) ------------------------------------------

    async def signing_secret(self) -> str:
        """For the API replicas, which verify tokens themselves (no actor hop per request)."""
        return self._accounts.signing_secret()

    async def create_account(
        self,
        username: str,
        password: str,
        role: domain.Role,
        by: auth.Principal | None = None,
        client: str | None = None,
    ) -> dict[str, Any]:
        return await self._accounts.create_account(username, password, role, by, client)

    async def login(self, username: str, password: str, client: str | None = None) -> dict[str, Any]:
        return await self._accounts.login(username, password, client)

    async def get_account(self, principal: auth.Principal) -> dict[str, Any]:
        return await self._accounts.get_account(principal)

    async def list_accounts(self, principal: auth.Principal) -> list[dict[str, Any]]:
        return await self._accounts.list_accounts(principal)

    # --- machines -----------------------------------------------------------------------

    async def register_machine(self, caller: MachineCaller, request: dict[str, Any]) -> dict[str, Any]:
        """With the provider's sign-in: enrolls the machine and answers its new agent key (the one it had
        is revoked). With the machine's own key: refreshes what it offers, and the key stays."""
        spec = domain.MachineSpec.model_validate(request["spec"])
        if isinstance(caller, agent_keys.MachineKey):
            known = await self._own_machine(caller, caller.machine_id)
            if known["machine_key"] != request["machine_key"]:
                raise errors.Forbidden(
                    f"this agent key belongs to machine {known['id']}, registered with another machine_key"
                )
            provider_id, provider = known["provider_id"], known["provider"]
        else:
            auth.check_role(caller, domain.Role.PROVIDER)
            provider_id, provider = caller.account_id, caller.username
        # What it claims decides its GPU verification (a new or changed claim is checked before any lease).
        previous = await self._store.get_machine_by_key(provider_id, request["machine_key"])
        verdict = gpu_verification.on_register(
            spec,
            domain.MachineSpec.model_validate_json(previous["spec"]) if previous else None,
            previous["gpu_check"] if previous else None,
        )
        row = await self._store.upsert_machine(
            machine_id=ids.new_machine_id(),
            provider_id=provider_id,
            machine_key=request["machine_key"],
            name=request["name"],
            spec=spec,
            price_per_gpu_hour=request.get("price_per_gpu_hour", 0.0),
            price_per_cpu_hour=request.get("price_per_cpu_hour", 0.0),
            now=self._clock(),
            gpu_check=(verdict.status, verdict.detail_json()) if verdict else None,
        )
        answer = {**self._public_machine(row), "heartbeat_interval_s": self._settings.heartbeat_interval_s}
        if isinstance(caller, auth.Principal):
            key_id, answer["agent_key"], key_hash = agent_keys.mint(row["id"])
            await self._store.replace_machine_key(row["id"], key_id, key_hash, self._clock())
            self._key_hashes[row["id"]] = key_hash
            logger.info("machine %s enrolled with key %s", row["id"], key_id)
        logger.info(
            "machine %s (%s) registered by %s: %d GPU(s) %s, %d CPUs",
            row["id"],
            row["name"],
            provider,
            row["gpus"],
            row["gpu_model"] or "",
            row["cpus"],
        )
        return answer

    async def heartbeat(
        self, principal: MachineCaller, machine_id: str, usage: dict[str, Any], leases: Sequence[str] = ()
    ) -> dict[str, Any]:
        (answer,) = await self.heartbeats([(principal, machine_id, usage, leases)])
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def heartbeats(
        self, beats: list[tuple[MachineCaller, str, dict[str, Any], Sequence[str]]]
    ) -> list[dict[str, Any] | Exception]:
        """Many heartbeats (caller, machine id, usage, leases held) at once, as the API replica batches
        them: one query of the machines, one write transaction. Each gets its ack, or the error it
        alone caused (a revoked key, another's machine); a failed write fails them all."""
        rows = await self._store.get_machines([machine_id for _, machine_id, _, _ in beats])
        answers: list[dict[str, Any] | Exception] = []
        accepted: list[tuple[int, str, domain.MachineUsage, frozenset[str]]] = []
        for i, (caller, machine_id, usage, leases) in enumerate(beats):
            try:
                row = await self._own_machine(caller, machine_id, row=rows.get(machine_id))
                if row["status"] == domain.MachineStatus.GONE.value:
                    raise errors.NotFound(f"machine {machine_id} has left the platform: register it again")
                accepted.append((i, machine_id, domain.MachineUsage.model_validate(usage), frozenset(leases)))
                answers.append({})
            except errors.DClusterError as exc:
                answers.append(exc)
        if not accepted:
            return answers
        received, key = self._clock(), object()
        self._beats_in_flight[key] = received
        try:
            await self._store.record_heartbeats(
                [(machine_id, usage) for _, machine_id, usage, _ in accepted],
                received,
                online_within_s=self._settings.offline_after_s,
                lock_wait_s=BEAT_LOCK_WAIT_S,
            )
        except Exception:
            self._deaf_at = self._clock()
            raise
        finally:
            del self._beats_in_flight[key]
        # The sweeper's agent half: leases no live cluster owns (ended while the agent was away) are closed.
        live = await self._store.live_lease_ids([machine_id for _, machine_id, _, held in accepted if held])
        for i, machine_id, _, held in accepted:
            self._held[machine_id] = (received, held)
            stale = sorted(held - live[machine_id]) if held else []
            answers[i] = {
                "status": domain.MachineStatus.ONLINE.value,
                "heartbeat_interval_s": self._settings.heartbeat_interval_s,
                "stale_leases": stale,
            }
        return answers

    def _silence_cutoff(self) -> float:
        """Heartbeats older than this make a machine silent; 0 while the platform has just been deaf."""
        now = self._clock()
        if self._beats_in_flight and now - min(self._beats_in_flight.values()) > SLOW_BEAT_WRITE_S:
            self._deaf_at = now  # heartbeats arrive but are not recorded yet
        if now - self._deaf_at < self._settings.offline_after_s + protocol.AGENT_MAX_RETRY_S:
            return 0.0
        return self._settings.online_cutoff(now)

    async def lease_liveness(self, machine_ids: Sequence[str] | None = None) -> liveness.LeaseLiveness:
        """What the ClusterManager judges lost nodes by: the cutoff below which a machine's last heartbeat
        means it is silent, and the leases each agent said it holds in its latest heartbeat, of machine_ids
        (None: every machine heard from; at 10,000 machines that map stalls this loop, heartbeats included,
        for tens of ms)."""
        held = self._held if machine_ids is None else {m: self._held[m] for m in machine_ids if m in self._held}
        return {
            "silence_cutoff": self._silence_cutoff(),
            "held": {mid: {"at": at, "leases": sorted(ids)} for mid, (at, ids) in held.items()},
        }

    async def leave(self, principal: MachineCaller, machine_id: str) -> dict[str, Any]:
        await self._own_machine(principal, machine_id)
        await self._store.set_machine_status(machine_id, domain.MachineStatus.GONE)
        self._work.wake(machine_id)  # release a poll in flight
        logger.info("machine %s left the platform", machine_id)
        return self._public_machine(database.written(await self._store.get_machine(machine_id), "a machine"))

    async def list_machines(self, principal: auth.Principal) -> list[dict[str, Any]]:
        return [self._public_machine(r) for r in await self._store.list_machines(_provider_scope(principal))]

    async def get_machine(self, principal: auth.Principal, machine_id: str) -> dict[str, Any]:
        return self._public_machine(await self._own_machine(principal, machine_id))

    async def list_offers(self) -> list[dict[str, Any]]:
        now = self._clock()
        rows = await self._store.list_machines_by_status(domain.MachineStatus.ONLINE)
        # Scoring and grouping every machine takes tens of ms at 10,000: in a thread, so that heartbeats
        # waiting on this actor's loop are served meanwhile.
        return await asyncio.to_thread(_offers_of, rows, now, self._settings.online_cutoff(now))

    # --- the agents' work channel -------------------------------------------------------

    async def next_work(self, principal: MachineCaller, machine_id: str, wait_s: float) -> list[dict[str, Any]]:
        """Long poll: returns the machine's queued work items, waiting up to wait_s for one."""
        await self._own_machine(principal, machine_id)
        return await self._work.wait(machine_id, min(max(wait_s, 0.0), self._settings.max_long_poll_s))

    async def push_work(self, machine_id: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Queues an item for the machine's agent (the buyer-cluster layer sends node leases this way)."""
        if await self._store.get_machine(machine_id) is None:
            raise errors.NotFound(f"machine {machine_id} not found")
        return self._work.push(machine_id, kind, payload)

    async def send_work(
        self, machine_id: str, kind: str, payload: protocol.WorkPayload, timeout_s: float
    ) -> protocol.WorkResult:
        """Queues an item and waits for the agent's WorkResult; a silent or offline agent gives ok=False."""
        machine = await self._store.get_machine(machine_id)
        if machine is None or not domain.MachineStatus(self._public_machine(machine)["status"]).is_leasable():
            return work_channel.unanswered(f"machine {machine_id} is not online: its agent cannot run {kind}")
        return await self._work.send(machine_id, kind, payload, timeout_s)

    async def complete_work(
        self, principal: MachineCaller, machine_id: str, item_id: str, result: protocol.WorkResult
    ) -> dict[str, Any]:
        """The agent's answer to an item."""
        await self._own_machine(principal, machine_id)
        self._work.answer(machine_id, item_id, result)
        return {"accepted": True}

    # --- helpers ------------------------------------------------------------------------

    async def _own_machine(
        self, caller: MachineCaller, machine_id: str, *, row: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The machine, if the caller may act for it; `row`: the machine as already read, if it was."""
        if isinstance(caller, agent_keys.MachineKey):
            return await self._keyed_machine(caller, machine_id, row=row)
        row = row or await self._store.get_machine(machine_id)
        # Another provider's machine is reported as missing, not forbidden: ids are not to be probed.
        if row is None or (caller.role is not domain.Role.ADMIN and row["provider_id"] != caller.account_id):
            raise errors.NotFound(f"machine {machine_id} not found")
        return row

    async def _keyed_machine(
        self, key: agent_keys.MachineKey, machine_id: str, *, row: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if key.machine_id != machine_id:  # a key speaks for its own machine alone
            raise errors.NotFound(f"machine {machine_id} not found")
        if machine_id not in self._key_hashes:
            active = await self._store.active_machine_key(machine_id)
            self._key_hashes[machine_id] = active["key_hash"] if active else None
        key_hash = self._key_hashes[machine_id]
        if key_hash is None or not agent_keys.matches(key, key_hash):
            raise errors.Unauthenticated(
                f"this agent key of machine {machine_id} is revoked or was replaced: "
                f"enroll the machine again with its provider's password"
            )
        row = row or await self._store.get_machine(machine_id)
        if row is None:
            raise errors.NotFound(f"machine {machine_id} not found")
        return row

    # --- machine keys -------------------------------------------------------------------

    async def list_machine_keys(self, principal: auth.Principal) -> list[dict[str, Any]]:
        """The keys of the provider's machines (every machine's, for an admin), active and revoked."""
        return [_public_key(r) for r in await self._store.list_machine_keys(_provider_scope(principal))]

    async def revoke_machine_key(self, principal: auth.Principal, key_id: str) -> dict[str, Any]:
        """Idempotent. The machine's next heartbeat or poll gets 401; it gets no new leases meanwhile."""
        row = await self._store.get_machine_key(key_id)
        if row is None or (principal.role is not domain.Role.ADMIN and row["provider_id"] != principal.account_id):
            raise errors.NotFound(f"machine key {key_id} not found")
        if row["revoked_at"] is None:
            await self._store.revoke_machine_key(key_id, self._clock())
            self._key_hashes.pop(row["machine_id"], None)
            await self._store.set_machine_status(row["machine_id"], domain.MachineStatus.OFFLINE)
            self._work.wake(row["machine_id"])  # a poll in flight returns; the next one is refused
            logger.info("machine key %s of machine %s revoked by %s", key_id, row["machine_id"], principal.username)
        return _public_key(database.written(await self._store.get_machine_key(key_id), "a machine key"))

    def _public_machine(self, row: dict[str, Any]) -> dict[str, Any]:
        machine = store_mod.decode_machine(row)
        machine["reliability"] = reputation.of_machine(row, self._clock())
        machine["gpu_verification"] = gpu_verification.public(row)
        # The sweeper persists an offline within one interval; readers see it at once.
        machine["status"] = domain.MachineStatus.effective(
            machine["status"], machine["last_heartbeat"], cutoff=self._settings.online_cutoff(self._clock())
        ).value
        return machine


def _offers_of(rows: list[dict[str, Any]], now: float, cutoff: float) -> list[dict[str, Any]]:
    leasable = [
        r for r in rows if domain.MachineStatus.effective(r["status"], r["last_heartbeat"], cutoff=cutoff).is_leasable()
    ]
    for r in leasable:  # fresh rows of this call: scored in place
        r["reliability"] = reputation.of_machine(r, now)
        r["gpu_verification"] = gpu_verification.status(r)
    return offers.group_offers(leasable, launchable_ray_versions())


def _provider_scope(principal: auth.Principal) -> int | None:
    """Whose machines a caller sees: a provider its own, an admin every one (None)."""
    if principal.role is domain.Role.ADMIN:
        return None
    auth.check_role(principal, domain.Role.PROVIDER)
    return principal.account_id


def _public_key(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "machine_id": row["machine_id"],
        "machine_name": row["machine_name"],
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
        "active": row["revoked_at"] is None,
    }
