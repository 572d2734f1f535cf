"""actors.backends.launcher: each SDK call in a Ray worker process of its own (a create's started ahead), stopped
with its caller; the launcher's process hygiene."""

from __future__ import annotations

import asyncio
import os
import tempfile

import pytest

from actors.access import cluster_files
from actors.backends import catalog, launcher
from actors.backends.market import launcher_config as market_config
from dcl_core import cluster_spec

pytestmark = pytest.mark.anyio


class FakeTask:
    """A Ray remote function: .remote() gives an awaitable 'ref'."""

    def __init__(self, delay_s=0.0):
        self.calls, self.delay_s, self.options_given = [], delay_s, []

    def options(self, **options):
        self.options_given.append(options)
        return self

    def remote(self, *args):
        self.calls.append(args)

        async def ref():
            await asyncio.sleep(self.delay_s)

        return asyncio.ensure_future(ref())


class FakeProcessClass:
    """The launcher's process class (a Ray actor class): .options(...).remote(tmp) starts one."""

    def __init__(self, delay_s=0.0, dead=0):
        self.started, self.options_given, self.delay_s, self.dead = [], [], delay_s, dead

    def options(self, **options):
        self.options_given.append(options)
        return self

    def remote(self, private_tmp):
        process = FakeProcess(self, private_tmp, died=self.dead > 0)
        self.dead -= 1
        self.started.append(process)
        return process


class FakeProcess:
    def __init__(self, cls, private_tmp, died):
        self.cls, self.private_tmp, self.died, self.configs = cls, private_tmp, died, []
        self.ready = self._method(self._ready)
        self.create = self._method(self._create)

    @staticmethod
    def _method(fn):
        return type("Method", (), {"remote": staticmethod(lambda *a: asyncio.ensure_future(fn(*a)))})()

    async def _ready(self):
        if self.died:
            raise launcher.ray.exceptions.RayActorError()
        return True

    async def _create(self, config):
        self.configs.append(config)
        await asyncio.sleep(self.cls.delay_s)


@pytest.fixture
def killed(monkeypatch):
    killed = []
    monkeypatch.setattr(launcher.ray, "kill", lambda process, no_restart: killed.append(process))
    return killed


async def test_each_create_runs_in_a_process_started_ahead_and_killed_after(killed):
    processes = FakeProcessClass()
    real = launcher.RayClusterLauncher("/state/launcher-tmp", process_class=processes)
    real.prestart()
    real.prestart()  # one is enough
    assert len(processes.started) == 1

    await real.create({"cluster_name": "c-1"})
    await real.create({"cluster_name": "c-2"})

    first, second, third = processes.started  # each started as the one before ended
    assert first.configs == [{"cluster_name": "c-1"}] and second.configs == [{"cluster_name": "c-2"}]
    assert third.configs == [] and killed == [first, second]  # the third waits for the next cluster
    assert {p.private_tmp for p in processes.started} == {"/state/launcher-tmp"}
    # One node (SQLite): on the head, beside the state dir.
    assert processes.options_given == [{"resources": launcher.HEAD_NODE_RESOURCE}] * 3


async def test_a_process_that_died_while_it_waited_is_replaced(killed):
    processes = FakeProcessClass(dead=1)
    real = launcher.RayClusterLauncher("/state/launcher-tmp", process_class=processes)
    real.prestart()
    await real.create({"cluster_name": "c-1"})
    dead, fresh, ahead = processes.started
    assert dead.configs == [] and fresh.configs == [{"cluster_name": "c-1"}] and killed == [fresh]
    assert ahead.configs == []  # for the next cluster


async def test_teardown_runs_one_task_with_the_private_temp_dir(monkeypatch):
    teardown = FakeTask()
    monkeypatch.setattr(launcher, "teardown_task", teardown)
    await launcher.RayClusterLauncher("/state/launcher-tmp").teardown({"cluster_name": "c-1"})
    assert teardown.calls == [({"cluster_name": "c-1"}, "/state/launcher-tmp")]
    assert teardown.options_given == [{"resources": launcher.HEAD_NODE_RESOURCE}]


async def test_with_a_shared_database_the_launcher_runs_on_any_node(monkeypatch, killed):
    processes, teardown = FakeProcessClass(), FakeTask()
    monkeypatch.setattr(launcher, "teardown_task", teardown)
    anywhere = launcher.RayClusterLauncher("/scratch/launcher-tmp", on_head=False, process_class=processes)
    await anywhere.create({"cluster_name": "c-2"})
    await anywhere.teardown({"cluster_name": "c-2"})
    assert set(map(str, processes.options_given)) == {"{}"} and teardown.options_given == [{}]


async def test_a_caller_that_gives_up_stops_the_launch(monkeypatch, killed):
    cancelled = []
    processes = FakeProcessClass(delay_s=30)
    monkeypatch.setattr(launcher, "teardown_task", FakeTask(delay_s=30))
    monkeypatch.setattr(launcher.ray, "cancel", lambda ref, force: cancelled.append(force))
    real = launcher.RayClusterLauncher("/tmp/x", process_class=processes)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(real.create({}), timeout=0.05)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(real.teardown({}), timeout=0.05)

    assert killed == [processes.started[0]] and cancelled == [True]


def test_market_configs_need_no_cloud_resources():
    spec = cluster_spec.ClusterSpec(num_workers=1, duration_s=600)
    config = market_config.render_market_config(
        cluster_id="c-00112233aabb", spec=spec, platform_url="http://127.0.0.1:9", provider_token="t"
    )
    assert catalog.launch_steps(config).prepare(config) is config


def test_process_hygiene_private_temp_dir_and_no_usage_stats(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", "/tmp"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    private = tmp_path / "launcher-tmp"
    launcher.prepare_process(str(private))
    assert private.stat().st_mode & 0o777 == 0o700
    assert tempfile.tempdir == str(private) and os.environ["TMPDIR"] == str(private)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"


def test_stale_launcher_files_are_removed(tmp_path):
    old, new, other = tmp_path / "ray-config-aa", tmp_path / "ray-config-bb", tmp_path / "keep"
    for p in (old, new, other):
        p.write_text("x")
    os.utime(old, (0, 0))
    os.utime(other, (0, 0))
    assert cluster_files.remove_stale_launcher_files(tmp_path, older_than_s=60) == 1
    assert not old.exists() and new.exists() and other.exists()
    assert cluster_files.remove_stale_launcher_files(tmp_path / "missing", older_than_s=60) == 0


def test_teardown_runs_the_launch_steps_of_the_configs_backend_around_the_sdk(tmp_path, monkeypatch):
    from ray.autoscaler import sdk

    calls = []

    class Steps:
        def handles(self, config):
            return config["provider"]["type"] == "fake"

        def warm_up(self):
            pass

        def prepare(self, config):
            calls.append("prepare")
            return {**config, "prepared": True}

        def release(self, config):
            calls.append(("release", config.get("prepared")))

    monkeypatch.setattr(catalog, "LAUNCH_STEPS", (*catalog.LAUNCH_STEPS, Steps()))
    monkeypatch.setattr(sdk, "teardown_cluster", lambda config, **_: calls.append(("sdk", config.get("prepared"))))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", "/tmp"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    launcher.teardown({"provider": {"type": "fake"}}, str(tmp_path / "launcher-tmp"))
    assert calls == ["prepare", ("sdk", True), ("release", True)]
