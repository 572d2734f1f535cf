"""The aws backend as the ClusterManager sees it: EC2 instances, which the sub-cluster's own autoscaler adds."""

from __future__ import annotations

from typing import Any

from actors.access import cluster_files
from actors.backends import backend
from actors.backends.aws import launcher_config
from actors.db import records
from actors.settings import PlatformSettings
from configs.aws import AwsSettings
from dcl_core import errors
from dcl_core.cluster_spec import ClusterSpec


class AwsBackend:
    """A head and GPU workers on EC2 (configs/aws.yaml); enabled by the platform's `aws:` settings."""

    name = "aws"
    watches_leases = False
    running_once_head_is_up = True
    names_token_file = True

    def __init__(self, settings: PlatformSettings):
        self._settings = settings

    def _aws(self) -> AwsSettings:
        if self._settings.aws is None:
            raise errors.InvalidInput("backend 'aws' is not enabled on this platform; use backend 'market'")
        return self._settings.aws

    def check(self, spec: ClusterSpec) -> None:
        launcher_config.check_spec(spec, self._aws())

    async def reserve(
        self, cluster_id: str, spec: ClusterSpec, place: backend.Place
    ) -> tuple[list[dict[str, Any]], str]:
        aws = self._aws()
        return [], f"EC2: a {aws.head_instance_type} head and {spec.num_workers} {aws.worker_instance_type} worker(s)"

    def launcher_config(self, cluster: records.Cluster, now: float) -> dict[str, Any]:
        config = launcher_config.render_aws_config(
            cluster_id=cluster.id,
            spec=cluster.spec,
            settings=self._aws(),
            ray_auth_token_path=self._settings.clusters_dir / cluster.id / cluster_files.TOKEN_FILE,
        )
        config["provider"]["dcluster_vpc_id"] = self._aws().vpc_id
        return config

    def needs_launcher_teardown(self, leases: list[records.Lease]) -> bool:
        return True  # EC2 instances exist whatever the leases say
