"""The ClusterManager's quota bookkeeping: reads what an account holds and its limits, checks with
actors.clusters.quotas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.access import auth
from actors.clusters import quotas
from actors.clusters import usage as usage_mod
from actors.db import cluster_store as cstore
from actors.settings import PlatformSettings
from dcl_core import domain, errors, quota_limits


class QuotaBook:
    def __init__(self, store: cstore.ClusterStore, settings: PlatformSettings, clock: Callable[[], float]):
        self._store = store
        self._defaults = settings.quotas
        self._clock = clock

    async def limits(self, account_id: int) -> tuple[quota_limits.QuotaLimits, dict[str, Any]]:
        """The account's effective limits and the overrides an admin set (None where not set)."""
        row = await self._store.quota_overrides(account_id) or {}
        overrides = {k: row.get(k) for k in quota_limits.LIMITS}
        return quotas.effective(self._defaults, overrides), overrides

    async def holding(self, account_id: int, period_s: int) -> quotas.Amounts:
        now = self._clock()
        live = [(c.spec, c.expires_at) for c in await self._store.live_clusters_of(account_id)]
        start = now - period_s
        metered = sum(
            usage_mod.lease_usage(lease, start, now, now)["gpu_seconds"]
            for lease in await self._store.leases_in_window(start, now, owner_id=account_id)
        )
        return quotas.holding(live, metered, now)

    async def check(self, account_id: int, demand: quotas.Amounts) -> None:
        """Raises Forbidden (403) naming the limit the request would pass. Callers hold the placement
        lock, so two requests of one account cannot both pass on the same room."""
        limits, _ = await self.limits(account_id)
        held = await self.holding(account_id, limits.period_s)
        account = await self._store.account(account_id)
        quotas.check(limits, held, demand, account=account["username"] if account else str(account_id))

    async def view(self, principal: auth.Principal, account_id: int) -> dict[str, Any]:
        """GET /v1/accounts/{id}/quota: the account itself, or an admin."""
        if principal.role is not domain.Role.ADMIN and principal.account_id != account_id:
            raise errors.NotFound(f"account {account_id} not found")
        account = await self._store.account(account_id)
        if account is None:
            raise errors.NotFound(f"account {account_id} not found")
        limits, overrides = await self.limits(account_id)
        held = await self.holding(account_id, limits.period_s)
        return {
            "account_id": account_id,
            "username": account["username"],
            "limits": limits.model_dump(),
            "overrides": overrides,
            "used": held.as_dict(),
        }

    async def set(self, principal: auth.Principal, account_id: int, overrides: dict[str, Any]) -> dict[str, Any]:
        """PUT /v1/accounts/{id}/quota (admins): replaces the account's overrides."""
        if principal.role is not domain.Role.ADMIN:
            raise errors.Forbidden("only an admin sets quotas")
        account = await self._store.account(account_id)
        if account is None:
            raise errors.NotFound(f"account {account_id} not found")
        if account["role"] != domain.Role.BUYER.value:
            raise errors.InvalidInput(f"account {account_id} is a {account['role']} account: quotas limit buyers")
        checked = quota_limits.QuotaOverrides.model_validate(overrides).model_dump()
        await self._store.set_quota_overrides(account_id, checked, by=principal.username, now=self._clock())
        return await self.view(principal, account_id)
