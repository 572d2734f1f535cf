"""`dcluster up` on a busy machine: a Ray head too slow to register is started again, not given up on."""

from __future__ import annotations

import pytest

from cli import platform as platform_mod
from cli import platform_state as pstate
from worker import procs


class FakeHeadStart:
    """procs.spawn for `ray start`: writes the log line Ray writes, exits with the next of `codes`."""

    def __init__(self, codes: list[int], log_line: str):
        self.codes, self.log_line, self.calls, self.stops = list(codes), log_line, 0, 0

    def spawn(self, cmd, *, env, cwd=None, log_path, owner_tag):
        self.calls += 1
        rc = self.codes.pop(0)
        with open(log_path, "a") as log:
            log.write(("ok\n" if rc == 0 else self.log_line + "\n"))

        class Proc:
            def wait(self, timeout=None):
                return rc
        return Proc()

    def stop_owned(self, owner_tag, roots=(), grace_s=5.0, settle_s=10.0):
        self.stops += 1


def start_head(tmp_path, monkeypatch, fake: FakeHeadStart) -> None:
    monkeypatch.setattr(procs, "spawn", fake.spawn)
    monkeypatch.setattr(procs, "stop_owned", fake.stop_owned)
    monkeypatch.setattr(procs, "owned_processes", lambda tag, roots=(): [])
    monkeypatch.setattr(procs, "port_is_free", lambda port, host="127.0.0.1": True)
    launcher = platform_mod.PlatformLauncher(tmp_path / "state")
    launcher.layout.logs.mkdir(parents=True)
    ports = pstate.RayPorts.allocate()
    launcher._start_head({"owner_tag": "dcl-platform-test"}, {}, ports, tmp_path / "ray")


def test_a_head_too_slow_to_register_is_started_again(tmp_path, monkeypatch):
    fake = FakeHeadStart([1, 0], "Exception: The current node timed out during startup. This could happen ...")
    with pytest.raises(pstate.PlatformError, match="gcs_server/raylet are not running"):  # no real processes
        start_head(tmp_path, monkeypatch, fake)
    assert fake.calls == 2 and fake.stops == 1  # the first attempt's leftovers were stopped


def test_other_start_failures_are_not_retried(tmp_path, monkeypatch):
    fake = FakeHeadStart([1, 0], "ValueError: port 6379 is already in use")
    with pytest.raises(pstate.PlatformError, match="failed \\(exit 1\\)"):
        start_head(tmp_path, monkeypatch, fake)
    assert fake.calls == 1


def test_a_head_that_never_registers_fails_after_the_last_attempt(tmp_path, monkeypatch):
    fake = FakeHeadStart([1] * platform_mod.RAY_START_ATTEMPTS, "The current node timed out during startup.")
    with pytest.raises(pstate.PlatformError, match="failed \\(exit 1\\)"):
        start_head(tmp_path, monkeypatch, fake)
    assert fake.calls == platform_mod.RAY_START_ATTEMPTS
