"""All calls to Ray's cluster-launcher SDK go through here, each in a fresh Ray worker process."""

from __future__ import annotations

import asyncio
import logging

import ray

logger = logging.getLogger(__name__)

# Pins work to the platform head, where the state dir (the SQLite database, the secrets' files) is.
HEAD_NODE_RESOURCE = {"node:__internal_head__": 0.001}


def _prepare_process(private_tmp: str) -> None:
    """Launcher hygiene for this (fresh) worker process."""
    import os
    import tempfile

    from ray.autoscaler._private.cli_logger import cli_logger
    cli_logger.configure(log_style="record", verbosity=0)
    # teardown_cluster writes the config, provider credential included, to a 0644 file in the temp dir.
    os.makedirs(private_tmp, mode=0o700, exist_ok=True)
    tempfile.tempdir = private_tmp
    os.environ["TMPDIR"] = private_tmp
    # The updater copies the launcher's usage-stats setting onto the sub-cluster head.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


# max_calls=1: the launcher keeps process-wide globals (cli_logger, provider caches), so every call
# gets a worker process of its own and concurrent launches cannot interfere.
@ray.remote(num_cpus=0, max_calls=1, max_retries=0)
def _create_or_update(config: dict, private_tmp: str) -> None:
    from ray.autoscaler import sdk
    _prepare_process(private_tmp)
    sdk.create_or_update_cluster(_with_cloud_resources(config), no_restart=False, restart_only=False,
                                 no_config_cache=True)


@ray.remote(num_cpus=0, max_calls=1, max_retries=0)
def _teardown(config: dict, private_tmp: str) -> None:
    from ray.autoscaler import sdk
    _prepare_process(private_tmp)
    config = _with_cloud_resources(config)
    sdk.teardown_cluster(config, workers_only=False, keep_min_workers=False)
    if config["provider"]["type"] == "aws":
        import time

        from actors import aws_ec2
        # The group stays in use until EC2 has let the instances go.
        for _ in range(30):
            if aws_ec2.delete_cluster_resources(config):
                break
            time.sleep(10)


def _with_cloud_resources(config: dict) -> dict:
    """AWS: the cluster's own locked-down security group, made before Ray's bootstrap (which would
    otherwise create one with SSH open to the world)."""
    if config["provider"]["type"] != "aws":
        return config
    from actors import aws_ec2
    return aws_ec2.ensure_security_group(config, vpc_id=config["provider"].get("dcluster_vpc_id"))


class RayClusterLauncher:
    """The real launcher (cluster_manager.Launcher): ray.autoscaler.sdk in a Ray task each."""

    def __init__(self, private_tmp: str, *, on_head: bool = True):
        self._private_tmp = private_tmp
        # On the head beside the state dir (one node); anywhere when the platform's state is in PostgreSQL.
        self._options = {"resources": HEAD_NODE_RESOURCE} if on_head else {}

    async def create(self, config: dict) -> None:
        await _run(_create_or_update.options(**self._options).remote(config, self._private_tmp))

    async def teardown(self, config: dict) -> None:
        await _run(_teardown.options(**self._options).remote(config, self._private_tmp))


async def _run(ref) -> None:
    try:
        await ref
    except asyncio.CancelledError:
        # Whoever waited gave up (e.g. the cluster is being deleted): stop the launcher too.
        ray.cancel(ref, force=True)
        raise
