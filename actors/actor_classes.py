"""Thin detached-actor wrappers around the plain control-plane classes, and their lookup/creation."""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import ray
from ray.actor import ActorClass, ActorHandle
from ray.util import scheduling_strategies

from actors import ray_metrics
from actors.access import cluster_files
from actors.backends import launcher
from actors.clusters import cluster_manager, expiry_reaper
from actors.db import cluster_store, store
from actors.machines import registry
from actors.settings import NAMESPACE, PlatformSettings
from dcl_core import protocol

logger = logging.getLogger(__name__)

REGISTRY_NAME = "ProviderRegistry"
CLUSTER_MANAGER_NAME = "ClusterManager"
EXPIRY_REAPER_NAME = "ExpiryReaper"


class Core(Protocol):
    """What thin_actor wraps: a plain class that recovers its state in start()."""

    async def start(self) -> None: ...


# The wrapper and the proxy forward methods by name, found at run time: what they take and return is the
# wrapped method's, which no static type here can name (Ray pickles it across the actor boundary).
Forwarded = Callable[..., Awaitable[Any]]


def freeze_heap() -> None:
    """Leaves what exists now out of every later garbage collection, as Serve does for its replicas: an actor's
    modules and recovered state (Ray, SQLAlchemy, pydantic: some 200,000 objects) live as long as it does, and a
    full collection that walks them stalls every call on its loop for 0.1-0.4 s on a busy machine (the
    registry's heartbeats waited behind one every 10-40 s at 10,000 machines)."""
    gc.collect()
    gc.freeze()


def thin_actor(
    core_cls: type[Core],
    build: Callable[..., Core],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    settle_heap: Callable[[], None] = freeze_heap,
) -> type:
    """A class forwarding every public coroutine method of core_cls to an instance made by build(*args).

    The instance's `start()` runs on the actor's event loop from __init__ (recovery happens
    on every restart); calls wait for it. Background loops named `run_*` are started after it.
    `sleep` waits out the backoff between failed starts; `settle_heap` runs once start() succeeded.
    """

    class Wrapper:
        def __init__(self, *args: Any):
            self._core = build(*args)
            self._attempts = 0
            self._last_error: str | None = None
            self._ready = asyncio.get_running_loop().create_task(self._start())
            self._loops: list[asyncio.Task[None]] = []

        async def _start(self) -> None:
            # Recovery must not fail for good on a passing fault (a locked database on a busy
            # machine, a peer actor still starting): retry, so the actor becomes ready. A
            # cancellation that reaches start() from below (a cancelled peer call) is such a
            # fault too; only the cancellation of this task itself (actor shutdown) ends it.
            for attempt in itertools.count():
                self._attempts = attempt + 1
                try:
                    await self._core.start()
                    self._last_error = None
                    break
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    self._last_error = "start() was cancelled"
                    logger.warning("%s start was cancelled (attempt %d); retrying", core_cls.__name__, attempt + 1)
                except Exception as exc:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("%s start failed (attempt %d); retrying", core_cls.__name__, attempt + 1)
                await sleep(min(2**attempt, 10))
            settle_heap()
            for name, _ in inspect.getmembers(core_cls, inspect.iscoroutinefunction):
                if name.startswith("run_"):
                    self._loops.append(asyncio.create_task(getattr(self._core, name)()))

        async def _started(self) -> None:
            # Shielded: a caller that gives up (a client that stopped waiting, a cancelled
            # actor call) must never cancel the recovery every other caller shares.
            await asyncio.shield(self._ready)

        async def ready(self) -> bool:
            await self._started()
            return True

        async def start_status(self) -> dict[str, Any]:
            """Answers at once: whether recovery finished, how many tries it took, the last failure."""
            return {
                "actor": core_cls.__name__,
                "ready": self._ready.done() and not self._ready.cancelled(),
                "attempts": self._attempts,
                "last_error": self._last_error,
            }

    def forward(name: str) -> Forwarded:
        async def method(self: Wrapper, *args: Any, **kwargs: Any) -> Any:
            await self._started()
            return await getattr(self._core, name)(*args, **kwargs)

        method.__name__ = name
        method.__doc__ = getattr(core_cls, name).__doc__
        return method

    for name, _ in inspect.getmembers(core_cls, inspect.iscoroutinefunction):
        if not name.startswith("_") and not name.startswith("run_") and name != "start":
            setattr(Wrapper, name, forward(name))
    Wrapper.__name__ = Wrapper.__qualname__ = core_cls.__name__ + "Actor"
    return Wrapper


def _build_registry(settings_json: str) -> registry.ProviderRegistry:
    settings = PlatformSettings.model_validate_json(settings_json)
    logging.basicConfig(level=logging.INFO)
    return registry.ProviderRegistry(store.Store(settings.db_location), settings, metrics=ray_metrics.RayMetrics())


ProviderRegistryActor = thin_actor(registry.ProviderRegistry, _build_registry)


class ActorProxy:
    """Calls a named actor's methods as coroutines, so a plain class can use an actor or a plain object
    alike. The handle is looked up on first use: actors that call each other may start in any order."""

    def __init__(self, name: str):
        self._name = name
        self._handle: ActorHandle[Any] | None = None

    def __getattr__(self, method_name: str) -> Forwarded:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._handle is None:
                # A blocking lookup on the actor's event loop can stall it: do it in a thread.
                self._handle = await asyncio.to_thread(self._lookup)
            return await getattr(self._handle, method_name).remote(*args, **kwargs)

        return call

    def _lookup(self) -> ActorHandle[Any]:
        handle: ActorHandle[Any] = ray.get_actor(self._name, namespace=NAMESPACE)
        return handle


def _build_cluster_manager(settings_json: str) -> cluster_manager.ClusterManager:
    settings = PlatformSettings.model_validate_json(settings_json)
    logging.basicConfig(level=logging.INFO)
    cluster_launcher = launcher.RayClusterLauncher(
        str(settings.state_dir / cluster_files.LAUNCHER_TMP), on_head=not settings.shared_database
    )
    cluster_launcher.prestart()  # the first cluster does not wait for a launcher process either
    return cluster_manager.ClusterManager(
        cluster_store.ClusterStore(settings.db_location),
        settings,
        # Each named actor serves its plain class's methods (thin_actor): the proxy is that class to its caller.
        registry=cast(cluster_manager.Registry, ActorProxy(REGISTRY_NAME)),
        reaper=cast(cluster_manager.Reaper, ActorProxy(EXPIRY_REAPER_NAME)),
        launcher=cluster_launcher,
        metrics=ray_metrics.RayMetrics(),
    )


ClusterManagerActor = thin_actor(cluster_manager.ClusterManager, _build_cluster_manager)


def _build_expiry_reaper(settings_json: str) -> expiry_reaper.ExpiryReaper:
    settings = PlatformSettings.model_validate_json(settings_json)
    logging.basicConfig(level=logging.INFO)
    return expiry_reaper.ExpiryReaper(
        cluster_store.ClusterStore(settings.db_location),
        clusters=cast(expiry_reaper.Clusters, ActorProxy(CLUSTER_MANAGER_NAME)),
        metrics=ray_metrics.RayMetrics(),
    )


ExpiryReaperActor = thin_actor(expiry_reaper.ExpiryReaper, _build_expiry_reaper)


def placement(settings: PlatformSettings) -> dict[str, Any]:
    """Where the control-plane actors may run. SQLite: on the head, beside the database file. PostgreSQL: on
    any platform node, preferring one added with `dcluster up --join`, so a lost head does not take them along
    (they restart on another node when theirs is lost)."""
    if not settings.shared_database:
        return {"resources": launcher.HEAD_NODE_RESOURCE}
    return {
        "scheduling_strategy": scheduling_strategies.NodeLabelSchedulingStrategy(
            hard={},
            # Ray's label operators are untyped.
            soft={protocol.PLATFORM_MEMBER_LABEL: scheduling_strategies.In(protocol.PLATFORM_MEMBER_VALUE)},  # type: ignore[no-untyped-call]
        )
    }


def _detached(cls: type, name: str, settings: PlatformSettings) -> ActorClass[Any]:
    detached: ActorClass[Any] = ray.remote(cls).options(
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
        **placement(settings),
        # Long polls from many agents wait inside the registry at once.
        max_concurrency=10_000,
    )
    return detached


def ensure_actors(settings: PlatformSettings) -> dict[str, ActorHandle[Any]]:
    """Looks up the control-plane actors, creating any that do not exist yet."""
    settings_json = settings.model_dump_json()
    handles: dict[str, ActorHandle[Any]] = {}
    for name, cls in (
        (REGISTRY_NAME, ProviderRegistryActor),
        (CLUSTER_MANAGER_NAME, ClusterManagerActor),
        (EXPIRY_REAPER_NAME, ExpiryReaperActor),
    ):
        handle: ActorHandle[Any] = _detached(cls, name, settings).remote(settings_json)  # type: ignore[assignment]  # Ray's overloads also allow a class
        handles[name] = handle
    return handles
