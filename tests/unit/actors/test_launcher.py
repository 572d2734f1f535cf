"""actors.launcher: each SDK call in its own Ray task, cancelled with its caller; the launcher's process hygiene."""

from __future__ import annotations

import asyncio
import os
import tempfile

import pytest

from actors import cluster_files, launcher


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


def test_create_and_teardown_run_one_task_each_with_the_private_temp_dir(monkeypatch):
    create, teardown = FakeTask(), FakeTask()
    monkeypatch.setattr(launcher, "_create_or_update", create)
    monkeypatch.setattr(launcher, "_teardown", teardown)
    real = launcher.RayClusterLauncher("/state/launcher-tmp")

    async def go():
        await real.create({"cluster_name": "c-1"})
        await real.teardown({"cluster_name": "c-1"})
    asyncio.run(go())
    assert create.calls == [({"cluster_name": "c-1"}, "/state/launcher-tmp")]
    assert teardown.calls == [({"cluster_name": "c-1"}, "/state/launcher-tmp")]
    # One node (SQLite): on the head, beside the state dir.
    assert create.options_given == teardown.options_given == [{"resources": launcher.HEAD_NODE_RESOURCE}]


def test_with_a_shared_database_the_launcher_runs_on_any_node(monkeypatch):
    create, teardown = FakeTask(), FakeTask()
    monkeypatch.setattr(launcher, "_create_or_update", create)
    monkeypatch.setattr(launcher, "_teardown", teardown)
    anywhere = launcher.RayClusterLauncher("/scratch/launcher-tmp", on_head=False)
    asyncio.run(anywhere.create({"cluster_name": "c-2"}))
    asyncio.run(anywhere.teardown({"cluster_name": "c-2"}))
    assert create.options_given == teardown.options_given == [{}]


def test_a_caller_that_gives_up_cancels_the_launcher_task(monkeypatch):
    cancelled = []
    monkeypatch.setattr(launcher, "_create_or_update", FakeTask(delay_s=30))
    monkeypatch.setattr(launcher.ray, "cancel", lambda ref, force: cancelled.append(force))

    async def go():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(launcher.RayClusterLauncher("/tmp/x").create({}), timeout=0.05)
    asyncio.run(go())
    assert cancelled == [True]


def test_market_configs_need_no_cloud_resources():
    config = {"provider": {"type": "external"}}
    assert launcher._with_cloud_resources(config) is config


def test_process_hygiene_private_temp_dir_and_no_usage_stats(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", "/tmp"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    private = tmp_path / "launcher-tmp"
    launcher._prepare_process(str(private))
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
