"""Where a buyer cluster's nodes run: one Backend per ClusterSpec.backend ("market": leases on providers'
machines; "aws": EC2 through Ray's own AWS provider). The ClusterManager asks its backend instead of
branching on the backend's name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from actors.access import auth, cluster_files
from actors.machines import placement
from actors.settings import PlatformSettings
from configs import aws, market
from dcl_core import domain, errors
from dcl_core.cluster_spec import ClusterSpec

Place = Callable[[str, list[placement.NodeRequest]], Awaitable[list[placement.Assignment]]]


class Backend(Protocol):
    # The reconcile loop watches the cluster's leases (lost machines, joined nodes).
    watches_leases: bool
    # Running as soon as the launcher brought the head up (workers join through the head's autoscaler).
    running_once_head_is_up: bool
    # Its launcher config names the cluster's Ray token file (cluster_files.TOKEN_FILE in the cluster's dir).
    names_token_file: bool

    def check(self, spec: ClusterSpec) -> None:
        """Raises errors.InvalidInput when this platform cannot run spec on this backend."""

    async def reserve(self, cluster_id: str, spec: ClusterSpec, place: Place) -> tuple[list[dict], str]:
        """The lease rows to store with the new cluster, and the event that says what was reserved."""

    def launcher_config(self, row: dict, spec: ClusterSpec, now: float) -> dict:
        """The cluster-launcher config of the cluster (row: its clusters row)."""

    def needs_launcher_teardown(self, leases: list[dict]) -> bool:
        """Whether the launcher has anything to tear down once the leases are closed."""


class MarketBackend:
    """Nodes are leases on providers' machines, made through MarketNodeProvider with a cluster-scoped token."""

    watches_leases = True
    running_once_head_is_up = False
    names_token_file = False

    def __init__(self, settings: PlatformSettings, tokens: Callable[[], auth.TokenIssuer]):
        self._settings = settings
        self._tokens = tokens

    def check(self, spec: ClusterSpec) -> None:
        pass

    async def reserve(self, cluster_id: str, spec: ClusterSpec, place: Place) -> tuple[list[dict], str]:
        assignments = await place(cluster_id, placement.spec_requests(spec))
        leases = [placement.lease_row(a) for a in assignments]
        return leases, "machines reserved: " + ", ".join(f"{l['role']} on {l['machine_id']}" for l in leases)

    def launcher_config(self, row: dict, spec: ClusterSpec, now: float) -> dict:
        ttl = int(row["expires_at"] - now) + 3600
        principal = auth.Principal(row["owner_id"], "cluster-" + row["id"], domain.Role.BUYER, cluster_id=row["id"])
        token = self._tokens().issue(principal, ttl_s=max(ttl, 3600))
        return market.render_market_config(
            cluster_id=row["id"], spec=spec, platform_url=self._settings.api_url, provider_token=token
        )

    def needs_launcher_teardown(self, leases: list[dict]) -> bool:
        return any(l["status"] == domain.LeaseStatus.OPEN for l in leases)


class AwsBackend:
    """A head and GPU workers on EC2 (configs/aws.yaml); enabled by the platform's `aws:` settings."""

    watches_leases = False
    running_once_head_is_up = True
    names_token_file = True

    def __init__(self, settings: PlatformSettings):
        self._settings = settings

    def check(self, spec: ClusterSpec) -> None:
        if self._settings.aws is None:
            raise errors.InvalidInput("backend 'aws' is not enabled on this platform; use backend 'market'")
        aws.check_spec(spec, self._settings.aws)

    async def reserve(self, cluster_id: str, spec: ClusterSpec, place: Place) -> tuple[list[dict], str]:
        return [], (
            f"EC2: a {self._settings.aws.head_instance_type} head and {spec.num_workers} "
            f"{self._settings.aws.worker_instance_type} worker(s)"
        )

    def launcher_config(self, row: dict, spec: ClusterSpec, now: float) -> dict:
        config = aws.render_aws_config(
            cluster_id=row["id"],
            spec=spec,
            settings=self._settings.aws,
            ray_auth_token_path=self._settings.clusters_dir / row["id"] / cluster_files.TOKEN_FILE,
        )
        config["provider"]["dcluster_vpc_id"] = self._settings.aws.vpc_id
        return config

    def needs_launcher_teardown(self, leases: list[dict]) -> bool:
        return True  # EC2 instances exist whatever the leases say


def backends(settings: PlatformSettings, tokens: Callable[[], auth.TokenIssuer]) -> dict[str, Backend]:
    """Every backend by its ClusterSpec.backend name."""
    return {"market": MarketBackend(settings, tokens), "aws": AwsBackend(settings)}
