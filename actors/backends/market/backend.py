"""The market backend as the ClusterManager sees it: leases on providers' machines, placed by the platform."""

from __future__ import annotations

from collections.abc import Callable

from actors.access import auth
from actors.backends import backend
from actors.backends.market import launcher_config
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

    async def reserve(self, cluster_id: str, spec: ClusterSpec, place: backend.Place) -> tuple[list[dict], str]:
        assignments = await place(cluster_id, placement.spec_requests(spec))
        leases = [placement.lease_row(a) for a in assignments]
        return leases, "machines reserved: " + ", ".join(f"{l['role']} on {l['machine_id']}" for l in leases)

    def launcher_config(self, row: dict, spec: ClusterSpec, now: float) -> dict:
        ttl = int(row["expires_at"] - now) + 3600
        principal = auth.Principal(row["owner_id"], "cluster-" + row["id"], domain.Role.BUYER, cluster_id=row["id"])
        token = self._tokens().issue(principal, ttl_s=max(ttl, 3600))
        return launcher_config.render_market_config(
            cluster_id=row["id"],
            spec=spec,
            platform_url=self._settings.api_url,
            provider_token=token,
            platform_ca=self._settings.tls_ca_pem(),
        )

    def needs_launcher_teardown(self, leases: list[dict]) -> bool:
        return any(l["status"] == domain.LeaseStatus.OPEN for l in leases)
