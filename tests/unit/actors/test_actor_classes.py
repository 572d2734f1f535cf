"""The thin actor wrapper: a shared recovery that no caller can cancel, retried until it succeeds."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from actors import actor_classes


class SlowStart:
    """A core whose start() takes a while and can be told to fail first."""

    def __init__(self, delay_s: float = 0.3, failures: list[BaseException] | None = None):
        self.delay_s = delay_s
        self.failures = list(failures or [])
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        await asyncio.sleep(self.delay_s)
        if self.failures:
            raise self.failures.pop(0)

    async def hello(self, name: str) -> str:
        return f"hello {name}"

    async def start_count(self) -> int:
        return self.starts

    async def run_ticker(self) -> None:
        """A background loop: thin_actor starts it once start() succeeded."""
        self.ticks = 0
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def ticks_seen(self) -> int:
        return getattr(self, "ticks", 0)


Wrapped = actor_classes.thin_actor(SlowStart, lambda *args: SlowStart(*args))


def run(coro):
    return asyncio.run(coro)


def test_a_caller_that_gives_up_does_not_cancel_the_shared_recovery():
    async def go():
        actor = Wrapped(0.3)
        # A health probe with a short timeout: wait_for cancels its ready() call.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(actor.ready(), timeout=0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(actor.hello("early"), timeout=0.05)
        assert await asyncio.wait_for(actor.ready(), timeout=5) is True
        assert await actor.hello("buyer") == "hello buyer"
        return await actor.start_count()

    assert run(go()) == 1


def test_a_cancellation_from_below_is_retried_like_any_passing_fault():
    async def go():
        actor = Wrapped(0.01, [asyncio.CancelledError(), RuntimeError("database is locked")])
        assert await asyncio.wait_for(actor.ready(), timeout=10) is True
        return await actor.start_count(), await actor.start_status()

    starts, status = run(go())
    assert starts == 3
    assert status == {"actor": "SlowStart", "ready": True, "attempts": 3, "last_error": None}


def test_start_status_answers_at_once_and_names_the_last_failure():
    async def go():
        actor = Wrapped(0.01, [RuntimeError("database is locked")])
        await asyncio.sleep(0.1)  # the first attempt failed; the retry waits 1 s
        status = await asyncio.wait_for(actor.start_status(), timeout=0.05)
        await actor.ready()
        return status

    status = run(go())
    assert status["ready"] is False
    assert status["attempts"] == 1
    assert "database is locked" in status["last_error"]


def test_wrapper_forwards_public_coroutines_only():
    assert hasattr(Wrapped, "hello") and hasattr(Wrapped, "ready") and hasattr(Wrapped, "start_status")
    assert not hasattr(Wrapped, "start") and not hasattr(Wrapped, "run_ticker")
    assert Wrapped.__name__ == "SlowStartActor" and Wrapped.hello.__doc__ == SlowStart.hello.__doc__


def test_background_loops_start_only_after_recovery():
    async def go():
        actor = Wrapped(0.1)
        await asyncio.sleep(0.05)
        before = await asyncio.wait_for(asyncio.shield(actor.ticks_seen()), timeout=1)  # waits for start()
        await asyncio.sleep(0.05)
        return before, await actor.ticks_seen()

    before, after = run(go())
    assert after > before >= 0


def test_actor_proxy_looks_the_actor_up_once_on_first_call(monkeypatch):
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

    async def go():
        return [await proxy.expire("c-1", 5.0), await proxy.schedule(cluster_id="c-2")]

    assert run(go()) == [("expire", ("c-1", 5.0), {}), ("schedule", (), {"cluster_id": "c-2"})]
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
