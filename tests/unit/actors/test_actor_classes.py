"""The thin actor wrapper: a shared recovery that no caller can cancel, retried until it succeeds."""

from __future__ import annotations

import asyncio
import gc
import inspect

import pytest

from actors import actor_classes

pytestmark = pytest.mark.anyio


class SlowStart:
    """A core whose start() waits until the test opens its gate, and can be told to fail first."""

    def __init__(self, gate: asyncio.Event, failures: list[BaseException] | None = None):
        self.gate = gate
        self.failures = list(failures or [])
        self.starts = 0
        self.ticks = 0
        self.settled_after_starts: int | None = None  # how many starts had run when the heap was settled

    async def start(self) -> None:
        self.starts += 1
        await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)

    async def hello(self, name: str) -> str:
        return f"hello {name}"

    async def start_count(self) -> int:
        return self.starts

    async def run_ticker(self) -> None:
        """A background loop: thin_actor starts it once start() succeeded."""
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def ticks_seen(self) -> int:
        return self.ticks


class Backoff:
    """The wrapper's sleep between failed starts: records each wait and returns at once, or holds it while
    `hold` is clear."""

    def __init__(self):
        self.waits: list[float] = []
        self.waiting = asyncio.Event()  # set while a retry waits
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.waiting.set()
        await self.hold.wait()
        self.waiting.clear()


def wrapped(backoff=None):
    """The wrapper class, its cores as they are built, and its backoff."""
    cores: list[SlowStart] = []

    def build(*args):
        cores.append(SlowStart(*args))
        return cores[-1]

    def settle_heap():  # the real one freezes the test process's heap
        for core in cores:
            core.settled_after_starts = core.starts

    backoff = backoff or Backoff()
    return actor_classes.thin_actor(SlowStart, build, sleep=backoff, settle_heap=settle_heap), cores, backoff


Wrapped, _, _ = wrapped()


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_recovery():
    gate = asyncio.Event()
    actor = Wrapped(gate)
    # A health probe with a short timeout: wait_for cancels its ready() call.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(actor.ready(), timeout=0.05)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(actor.hello("early"), timeout=0.05)
    gate.set()
    assert await asyncio.wait_for(actor.ready(), timeout=5) is True
    assert await actor.hello("buyer") == "hello buyer"
    assert await actor.start_count() == 1


async def test_a_cancellation_from_below_is_retried_like_any_passing_fault():
    cls, _, backoff = wrapped()
    gate = asyncio.Event()
    gate.set()
    actor = cls(gate, [asyncio.CancelledError(), RuntimeError("database is locked")])
    assert await asyncio.wait_for(actor.ready(), timeout=10) is True
    assert await actor.start_count() == 3
    assert await actor.start_status() == {"actor": "SlowStart", "ready": True, "attempts": 3, "last_error": None}
    assert backoff.waits == [1, 2]  # doubling, between the attempts


async def test_start_status_answers_at_once_and_names_the_last_failure():
    backoff = Backoff()
    backoff.hold.clear()
    cls, _, _ = wrapped(backoff)
    gate = asyncio.Event()
    gate.set()
    actor = cls(gate, [RuntimeError("database is locked")])
    await asyncio.wait_for(backoff.waiting.wait(), 5)  # the first attempt failed; the retry waits
    status = await asyncio.wait_for(actor.start_status(), timeout=0.05)
    backoff.hold.set()
    await actor.ready()
    assert status["ready"] is False
    assert status["attempts"] == 1
    assert "database is locked" in status["last_error"]


def test_wrapper_forwards_public_coroutines_only():
    assert hasattr(Wrapped, "hello") and hasattr(Wrapped, "ready") and hasattr(Wrapped, "start_status")
    assert not hasattr(Wrapped, "start") and not hasattr(Wrapped, "run_ticker")
    assert Wrapped.__name__ == "SlowStartActor" and Wrapped.hello.__doc__ == SlowStart.hello.__doc__


async def test_background_loops_start_only_after_recovery():
    cls, cores, _ = wrapped()
    gate = asyncio.Event()
    actor = cls(gate)
    for _ in range(10):
        await asyncio.sleep(0)
    assert cores[0].ticks == 0  # start() still waits: no loop yet
    gate.set()
    await actor.ready()
    for _ in range(10):
        await asyncio.sleep(0)
    assert await actor.ticks_seen() > 0


async def test_the_heap_is_settled_once_after_the_start_that_succeeded():
    cls, cores, _ = wrapped()
    gate = asyncio.Event()
    actor = cls(gate, [RuntimeError("database is locked")])
    for _ in range(10):
        await asyncio.sleep(0)
    assert cores[0].settled_after_starts is None  # start() still waits
    gate.set()
    await asyncio.wait_for(actor.ready(), timeout=10)
    assert cores[0].settled_after_starts == 2  # after the retry that succeeded, not the failed attempt


def test_freeze_heap_leaves_what_exists_out_of_later_collections():
    try:
        actor_classes.freeze_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the test process's heap collects as before


async def test_actor_proxy_looks_the_actor_up_once_on_first_call(monkeypatch):
    calls = []

    class Method:
        def __init__(self, name):
            self.name = name

        def remote(self, *args, **kwargs):
            async def answer():
                return (self.name, args, kwargs)

            return answer()

    class Handle:
        def __getattr__(self, name):
            return Method(name)

    def get_actor(name, namespace):
        calls.append((name, namespace))
        return Handle()

    monkeypatch.setattr(actor_classes.ray, "get_actor", get_actor)
    proxy = actor_classes.ActorProxy("ClusterManager")

    assert await proxy.expire("c-1", 5.0) == ("expire", ("c-1", 5.0), {})
    assert await proxy.schedule(cluster_id="c-2") == ("schedule", (), {"cluster_id": "c-2"})
    assert calls == [("ClusterManager", actor_classes.NAMESPACE)]


def test_on_sqlite_the_actors_stay_on_the_head_beside_the_database(tmp_path):
    from actors.settings import PlatformSettings

    settings = PlatformSettings(state_dir=tmp_path)
    assert actor_classes.placement(settings) == {"resources": {"node:__internal_head__": 0.001}}


def test_on_postgresql_the_actors_may_run_on_any_node_and_prefer_a_joined_one(tmp_path):
    from ray.util import scheduling_strategies

    from actors.settings import PlatformSettings
    from dcl_core import protocol

    settings = PlatformSettings(state_dir=tmp_path, database="postgresql://dcluster@db:5432/dcluster")
    options = actor_classes.placement(settings)
    assert "resources" not in options  # no pin to the head
    strategy = options["scheduling_strategy"]
    assert isinstance(strategy, scheduling_strategies.NodeLabelSchedulingStrategy)
    assert strategy.hard == []  # a preference only: the head takes them when no other node is there
    assert [e.key for e in strategy.soft] == [protocol.PLATFORM_MEMBER_LABEL]


def test_the_cluster_manager_actor_serves_its_parts_apis_and_no_private_step():
    """The buyer and node-provider APIs are parts of the ClusterManager: the actor serves each of their public
    methods, with their signatures, and none of the manager's own private steps."""
    from actors.clusters.cluster_api import BuyerApi
    from actors.clusters.cluster_manager import ClusterManager
    from actors.clusters.node_api import NodeProviderApi

    served = {name for name, _ in inspect.getmembers(actor_classes.ClusterManagerActor, inspect.iscoroutinefunction)}
    for part in (BuyerApi, NodeProviderApi):
        for name, method in inspect.getmembers(part, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                assert name in served
                assert inspect.signature(getattr(ClusterManager, name)) == inspect.signature(method)
    assert not {n for n in served if n.startswith("_") and n not in ("_started", "_start")}
