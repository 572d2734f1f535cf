"""`dcluster up` on a busy machine: a `ray start` that missed Ray's fixed raylet window is retried, not fatal."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cli import platform as platform_mod
from cli import platform_state as pstate
from worker import procs


@pytest.fixture
def fake_ray(tmp_path, monkeypatch):
    """Stand-ins for `ray start`: each call runs the next script; gcs_server/raylet are renamed sleeps."""
    for name in ("gcs_server", "raylet"):
        os.symlink("/bin/sleep", tmp_path / name)
    scripts: list[str] = []
    monkeypatch.setattr(pstate, "ray_head_command", lambda **_: ["bash", "-c", scripts.pop(0)])
    tag = "dcl-test-" + uuid.uuid4().hex[:8]
    yield tmp_path, scripts, tag
    procs.stop_owned(tag, grace_s=1)


def _start(tmp_path: Path, tag: str) -> dict:
    launcher = platform_mod.PlatformLauncher(tmp_path / "state")
    record = {"owner_tag": tag}
    launcher._save = lambda record: None
    ports = procs.allocate_ray_ports()
    launcher._start_head(record, dict(os.environ), ports, tmp_path / "ray-tmp")
    return record


def _started(tmp_path: Path, name: str) -> str:
    # Like ray start, return only once the process runs under its name (a loaded machine may not have
    # exec'd a backgrounded child yet when bash reaches its exit).
    return f'{tmp_path}/{name} 60 & p=$!; while [ "$(cat /proc/$p/comm 2>/dev/null)" != {name} ]; do sleep 0.02; done; '


def _slow_then(tmp_path: Path, exit_code: int) -> str:
    # What ray start prints when its raylet misses the window, leaving a process behind.
    return (
        _started(tmp_path, "gcs_server") + "echo 'Exception: The current node timed out during startup. "
        f"This could happen because ...'; exit {exit_code}"
    )


def _healthy(tmp_path: Path) -> str:
    return _started(tmp_path, "gcs_server") + _started(tmp_path, "raylet") + "exit 0"


def test_a_slow_first_start_is_retried_after_stopping_what_it_left(fake_ray):
    tmp_path, scripts, tag = fake_ray
    scripts += [_slow_then(tmp_path, 1), _healthy(tmp_path)]
    record = _start(tmp_path, tag)
    assert sorted(p["name"] for p in record["head_processes"]) == ["gcs_server", "raylet"]
    # The first attempt's gcs_server was stopped before the retry: exactly one of each runs.
    names = sorted(platform_mod.platform_status.proc_record(p)["name"] for p in procs.owned_processes(tag))
    assert names == ["gcs_server", "raylet"]


def test_it_gives_up_after_the_last_attempt_with_the_log(fake_ray):
    tmp_path, scripts, tag = fake_ray
    scripts += [_slow_then(tmp_path, 1)] * platform_mod.HEAD_START_ATTEMPTS
    with pytest.raises(pstate.PlatformError, match=r"`ray start` failed \(exit 1\)") as err:
        _start(tmp_path, tag)
    assert "timed out during startup" in err.value.details
    assert not scripts


def test_other_failures_are_not_retried(fake_ray):
    tmp_path, scripts, tag = fake_ray
    scripts += ["echo 'ValueError: bad --labels'; exit 2", _healthy(tmp_path)]
    with pytest.raises(pstate.PlatformError, match=r"exit 2"):
        _start(tmp_path, tag)
    assert len(scripts) == 1
