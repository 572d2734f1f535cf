"""What the launcher runs around Ray's SDK for an aws cluster: its own security group before, and its
security group and key pair removed after teardown (Ray leaves both)."""

from __future__ import annotations

import time
from typing import Any

from actors.backends.aws import ec2

RELEASE_TRIES, RELEASE_INTERVAL_S = 30, 10.0


class AwsLaunchSteps:
    """backend.LaunchSteps of the aws backend."""

    def handles(self, config: dict[str, Any]) -> bool:
        return bool(config["provider"]["type"] == "aws")

    def warm_up(self) -> None:
        pass  # boto3 loads at the first aws launch: most platforms never make one

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        # Made before Ray's bootstrap, which would otherwise create one with SSH open to the world.
        return ec2.ensure_security_group(config, vpc_id=config["provider"].get("dcluster_vpc_id"))

    def release(self, config: dict[str, Any]) -> None:
        for _ in range(RELEASE_TRIES):  # the group stays in use until EC2 has let the instances go
            if ec2.delete_cluster_resources(config):
                return
            time.sleep(RELEASE_INTERVAL_S)
