"""`dcluster up` on a busy machine: a `ray start` that missed Ray's fixed raylet window is retried, not fatal."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from cli.platform import errors as platform_errors
from cli.platform import ray_node, state
from worker import procs


@pytest.fixture
def fake_ray(tmp_path):
    """Stand-ins for `ray start`: each call runs the next script; gcs_server/raylet are renamed sleeps."""
    for name in ("gcs_server", "raylet"):
        os.symlink("/bin/sleep", tmp_path / name)
    scripts: list[str] = []
    tag = "dcl-test-" + uuid.uuid4().hex[:8]
    yield tmp_path, scripts, tag
    procs.stop_owned(tag, grace_s=1)


def _start(tmp_path: Path, scripts: list[str], tag: str) -> list[dict]:
    return _start_on(tmp_path, scripts, tag, procs.allocate_ray_ports())


def _start_on(tmp_path: Path, scripts: list[str], tag: str, ports) -> list[dict]:
    layout = state.Layout(tmp_path / "state")
    return ray_node.start_node(
        layout=layout,
        owner_tag=tag,
        env=dict(os.environ),
        command=lambda: ["bash", "-c", scripts.pop(0)],
        ports=ports,
        core_processes=ray_node.HEAD_CORE_PROCESSES,
        role="head",
    )


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
    core = _start(tmp_path, scripts, tag)
    assert sorted(p["name"] for p in core) == ["gcs_server", "raylet"]
    # The first attempt's gcs_server was stopped before the retry: exactly one of each runs.
    names = sorted(ray_node.proc_record(p)["name"] for p in procs.owned_processes(tag))
    assert names == ["gcs_server", "raylet"]


def test_it_gives_up_after_the_last_attempt_with_the_log(fake_ray):
    tmp_path, scripts, tag = fake_ray
    scripts += [_slow_then(tmp_path, 1)] * ray_node.START_ATTEMPTS
    with pytest.raises(platform_errors.PlatformError, match=r"`ray start` failed \(exit 1\)") as err:
        _start(tmp_path, scripts, tag)
    assert "timed out during startup" in err.value.details
    assert not scripts


def test_other_failures_are_not_retried(fake_ray):
    tmp_path, scripts, tag = fake_ray
    scripts += ["echo 'ValueError: bad --labels'; exit 2", _healthy(tmp_path)]
    with pytest.raises(platform_errors.PlatformError, match=r"exit 2"):
        _start(tmp_path, scripts, tag)
    assert len(scripts) == 1


def test_a_port_taken_before_ray_start_is_picked_again(fake_ray):
    tmp_path, scripts, tag = fake_ray
    scripts += [_healthy(tmp_path)]
    first = procs.allocate_ray_ports()
    started_on = []

    def start(ports):
        started_on.append(ports)
        return _start_on(tmp_path, scripts, tag, ports)

    with socket.socket() as squatter:  # another process binds a picked port between picking and `ray start`
        squatter.bind(("127.0.0.1", first.dashboard))
        squatter.listen()
        ports, core = ray_node.on_free_ports(first, start, repick=procs.allocate_ray_ports, kept_gcs=None)
    assert started_on[0] == first and ports == started_on[1] != first
    assert sorted(p["name"] for p in core) == ["gcs_server", "raylet"]


def test_a_taken_kept_gcs_port_ends_the_start(fake_ray):
    tmp_path, scripts, tag = fake_ray
    first = procs.allocate_ray_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first.gcs))
        squatter.listen()
        with pytest.raises(ray_node.PortTaken, match=f"port {first.gcs} was taken"):
            ray_node.on_free_ports(
                first,
                lambda ports: _start_on(tmp_path, scripts, tag, ports),
                repick=procs.allocate_ray_ports,
                kept_gcs=first.gcs,
            )
    assert not procs.owned_processes(tag)
