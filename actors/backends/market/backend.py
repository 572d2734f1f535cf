"""The market backend as the ClusterManager sees it: leases on providers' machines, placed by the platform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.access import auth
from actors.backends import backend
from actors.backends.market import launcher_config
from actors.db import records
from actors.machines import placement
from actors.settings import PlatformSettings
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec


class MarketBackend:
    """Nodes are leases on providers' machines, made through MarketNodeProvider with a cluster-scoped token."""

    name = "market"
    watches_leases = True
    running_once_head_is_up = False
    names_token_file = False

    def __init__(self, settings: PlatformSettings, tokens: Callable[[], auth.TokenIssuer]):
        self._settings = settings
        self._tokens = tokens

    def check(self, spec: ClusterSpec) -> None:
        pass

    async def reserve(
        self, cluster_id: str, spec: ClusterSpec, place: backend.Place
    ) -> tuple[list[dict[str, Any]], str]:
        assignments = await place(cluster_id, placement.spec_requests(spec))
        leases = [placement.lease_row(a) for a in assignments]
        return leases, "machines reserved: " + ", ".join(f"{l['role']} on {l['machine_id']}" for l in leases)

    def launcher_config(self, cluster: records.Cluster, now: float) -> dict[str, Any]:
        ttl = int(cluster.expires_at - now) + 3600
        principal = auth.Principal(cluster.owner_id, "cluster-" + cluster.id, domain.Role.BUYER, cluster_id=cluster.id)
        token = self._tokens().issue(principal, ttl_s=max(ttl, 3600))
        return launcher_config.render_market_config(
            cluster_id=cluster.id,
            spec=cluster.spec,
            platform_url=self._settings.api_url,
            provider_token=token,
            platform_ca=self._settings.tls_ca_pem(),
        )

    def needs_launcher_teardown(self, leases: list[records.Lease]) -> bool:
        return any(l.is_open for l in leases)
