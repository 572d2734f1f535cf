"""All calls to Ray's cluster-launcher SDK go through here, each in a fresh Ray worker process, between the launch
steps of the config's backend (backend.LaunchSteps, found through catalog.py: the launcher names no backend)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.backends import catalog

logger = logging.getLogger(__name__)

# Pins work to the platform head, where the state dir (the SQLite database, the secrets' files) is.
HEAD_NODE_RESOURCE = {"node:__internal_head__": 0.001}


def prepare_process(private_tmp: str) -> None:
    """Launcher hygiene for this (fresh) worker process."""
    import os
    import tempfile

    from ray.autoscaler._private.cli_logger import cli_logger

    cli_logger.configure(log_style="record", verbosity=0)  # type: ignore[no-untyped-call]  # Ray's, untyped
    # teardown_cluster writes the config, provider credential included, to a 0644 file in the temp dir.
    os.makedirs(private_tmp, mode=0o700, exist_ok=True)
    tempfile.tempdir = private_tmp
    os.environ["TMPDIR"] = private_tmp
    # The updater copies the launcher's usage-stats setting onto the sub-cluster head.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class _LaunchProcess:
    """A worker process for one `create_or_update_cluster`, started before a cluster asks for it: a new Ray
    worker takes ~0.4 s to start on the platform head, which every cluster's start used to wait for. It is
    killed after its one call, so the launcher's process-wide globals (cli_logger, provider caches) never
    reach another cluster's launch."""

    def __init__(self, private_tmp: str):
        prepare_process(private_tmp)
        from ray.autoscaler import sdk  # noqa: F401 - imported ahead, as each backend's own modules are

        catalog.warm_up()

    def ready(self) -> bool:
        return True

    def create(self, config: dict[str, Any]) -> None:
        from ray.autoscaler import sdk

        config = catalog.launch_steps(config).prepare(config)
        sdk.create_or_update_cluster(config, no_restart=False, restart_only=False, no_config_cache=True)


def teardown(config: dict[str, Any], private_tmp: str) -> None:
    """A cluster's teardown through Ray's SDK, between its backend's launch steps (in a fresh worker process)."""
    from ray.autoscaler import sdk

    prepare_process(private_tmp)
    steps = catalog.launch_steps(config)
    config = steps.prepare(config)
    sdk.teardown_cluster(config, workers_only=False, keep_min_workers=False)
    steps.release(config)


# One process a call: the SDK's process-wide globals never reach another cluster's teardown.
teardown_task = ray.remote(num_cpus=0, max_calls=1, max_retries=0)(teardown)


class RayClusterLauncher:
    """The real launcher (cluster_manager.Launcher): ray.autoscaler.sdk in a Ray worker process each."""

    def __init__(self, private_tmp: str, *, on_head: bool = True, process_class: type[_LaunchProcess] = _LaunchProcess):
        self._private_tmp = private_tmp
        # On the head beside the state dir (one node); anywhere when the platform's state is in PostgreSQL.
        self._options = {"resources": HEAD_NODE_RESOURCE} if on_head else {}
        self._process_class = process_class
        self._next_process: ActorHandle[_LaunchProcess] | None = None  # started ahead for the next create

    def prestart(self) -> None:
        """Starts the process the next create will use, if none is starting yet."""
        if self._next_process is None:
            self._next_process = self._start_process()

    def _start_process(self) -> ActorHandle[_LaunchProcess]:
        # ray.remote(...) with options leaves the class's own type to mypy: .options() is Ray's, untyped.
        starting = self._process_class.options(**self._options)  # type: ignore[attr-defined]
        handle: ActorHandle[_LaunchProcess] = starting.remote(self._private_tmp)
        return handle

    async def create(self, config: dict[str, Any]) -> None:
        process = await self._take_process()
        try:
            await process.create.remote(config)
        finally:  # one launch a process; a caller that gave up (e.g. the cluster is being deleted) stops it too
            ray.kill(process, no_restart=True)
            # The next one starts now, not while this cluster's nodes start: they need the CPU more.
            self.prestart()

    async def teardown(self, config: dict[str, Any]) -> None:
        await _run(teardown_task.options(**self._options).remote(config, self._private_tmp))

    async def _take_process(self) -> ActorHandle[_LaunchProcess]:
        process = self._next_process or self._start_process()
        self._next_process = None
        try:
            await process.ready.remote()
        except ray.exceptions.RayActorError:  # it died while it waited (e.g. its node went away): a new one
            logger.warning("the launcher process started ahead died; starting another")
            process = self._start_process()
        return process


async def _run(ref: ray.ObjectRef[None]) -> None:
    try:
        await ref
    except asyncio.CancelledError:
        # Whoever waited gave up (e.g. the cluster is being deleted): stop the launcher too.
        ray.cancel(ref, force=True)
        raise
