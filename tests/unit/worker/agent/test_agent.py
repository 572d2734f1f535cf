"""The provider agent with a fake platform client and fake waits: no Ray, no network, instant."""

from __future__ import annotations

import inspect
import json
import logging
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import dcluster
from dcl_core import domain, protocol
from tests.waiting import wait_for
from worker import procs
from worker.agent import agent as agent_mod
from worker.agent import cli as agent_cli
from worker.agent import lease_work, leases
from worker.agent import state as state_mod
from worker.agent.sandbox import base as sandbox_base
from worker.agent.sandbox import unsandboxed

PASSWORD = "s3cret-pass"
SPEC = domain.MachineSpec(
    hostname="gpu box #1", cpus=8, memory_mb=32000, gpus=[domain.GpuInfo(index=0, model="RTX 4090", memory_mb=24564)]
)
REPO = Path(__file__).resolve().parents[4]


class FakeClient:
    """Implements client.PlatformApi; `script[method]` queues results (an exception is raised) before defaults."""

    def __init__(self, interval_s: float = 7.0):
        self.interval_s = interval_s
        self.specs: list[domain.MachineSpec] = []  # as registered
        self.script: dict[str, list] = {
            "login": [],
            "register_machine": [],
            "heartbeat": [],
            "poll_work": [],
            "leave": [],
            "post_result": [],
        }
        self.calls: list[str] = []
        self.registrations: list[tuple[str, str]] = []
        self.heartbeats: list[tuple[str, domain.MachineUsage]] = []
        self.held: list[list[str]] = []  # the leases each heartbeat said the agent holds
        self.left: list[tuple[str, float | None]] = []
        self.work: queue.Queue = queue.Queue()
        self.results: list[tuple[str, str, dict]] = []  # (machine_id, item_id, WorkResult JSON) accepted
        self.lock = threading.Lock()
        self.token: str | None = None  # what the next call would carry
        self.keys_minted = 0

    def _next(self, name):
        with self.lock:
            self.calls.append(name)
            if self.script[name]:
                result = self.script[name].pop(0)
                if isinstance(result, BaseException):
                    raise result
                return result
        return None

    def login(self, username: str, password: str) -> str:
        assert (username, password) == ("prov1", PASSWORD)
        self.token = self._next("login") or "tok"
        return self.token

    def set_token(self, token: str | None) -> None:
        self.token = token

    def register_machine(
        self,
        machine_key: str,
        name: str,
        spec: domain.MachineSpec,
        price_per_gpu_hour: float = 0.0,
        price_per_cpu_hour: float = 0.0,
    ) -> dict:
        answer = self._next("register_machine")
        self.registrations.append((machine_key, name))
        self.specs.append(spec)
        answer = answer or {"id": "m-1", "heartbeat_interval_s": self.interval_s}
        if self.token == "tok":  # the provider's sign-in enrolls the machine: a new agent key
            self.keys_minted += 1
            answer = {**answer, "agent_key": f"dcm.{answer['id']}.key{self.keys_minted}"}
        return answer

    def heartbeat(self, machine_id: str, usage: domain.MachineUsage, leases: Sequence[str] = ()) -> dict:
        answer = self._next("heartbeat")
        self.heartbeats.append((machine_id, usage))
        self.held.append(sorted(leases))
        return answer or {"status": "online", "heartbeat_interval_s": self.interval_s}

    def poll_work(self, machine_id: str, wait_s: float = 20) -> list[dict]:
        answer = self._next("poll_work")
        if answer is not None:
            return answer
        try:  # a long poll: blocks until work arrives or wait_s passes
            return [self.work.get(timeout=wait_s)]
        except queue.Empty:
            return []

    def leave(self, machine_id: str, *, timeout_s: float | None = None) -> dict:
        self._next("leave")
        self.left.append((machine_id, timeout_s))
        return {}

    def post_result(self, machine_id: str, item_id: str, result: dict) -> dict:
        self._next("post_result")
        protocol.WorkResult.model_validate(result)  # the agent sends exactly the protocol's body
        with self.lock:
            self.results.append((machine_id, item_id, result))
        return {}

    def wait_results(self, n: int, timeout_s: float = 10.0) -> dict[str, dict]:
        """Wait until n results were posted; item id -> result."""

        def posted() -> dict[str, dict] | None:
            with self.lock:
                return {item_id: result for _, item_id, result in self.results} if len(self.results) >= n else None

        return wait_for(posted, timeout_s=timeout_s, interval_s=0.01, what=f"{n} results posted")


class FakeWaits:
    """Stands in for the agent's sleep and clock: records each wait and advances the clock by it."""

    def __init__(self):
        self.now = 1000.0
        self.waits: list[float] = []

    def sleep(self, seconds):
        self.waits.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


def make_settings(tmp_path, **kw):
    kw = {"password": PASSWORD, "state_dir": tmp_path / "state", **kw}
    return agent_mod.AgentSettings(platform_url="http://platform.test", username="prov1", **kw)


def make_agent(tmp_path, client=None, waits=None, detect_fn=lambda: SPEC, **kw):
    waits = waits or FakeWaits()
    return agent_mod.Agent(
        client or FakeClient(),
        make_settings(tmp_path, **kw),
        detect_fn=detect_fn,
        usage_fn=lambda n: domain.MachineUsage(active_leases=n),
        sleep=waits.sleep,
        clock=waits.clock,
        rand=lambda: 1.0,
    )


def test_fake_client_matches_the_real_one():
    """The fake implements the same Protocol as dcluster.Client, so it cannot drift."""
    methods = [n for n, _ in inspect.getmembers(dcluster.PlatformApi, inspect.isfunction) if not n.startswith("_")]
    assert set(methods) == {"login", "set_token", "register_machine", "heartbeat", "poll_work", "leave", "post_result"}
    for name in methods:

        def shape(fn):
            return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

        proto = shape(getattr(dcluster.PlatformApi, name))
        assert shape(getattr(dcluster.Client, name)) == proto, name
        assert shape(getattr(FakeClient, name)) == proto, name


# --- state dir -----------------------------------------------------------------------------


def test_machine_key_persists_with_private_modes(tmp_path):
    first = make_agent(tmp_path)
    second = make_agent(tmp_path)
    assert first.machine_key == second.machine_key and first.machine_key.startswith("mk-")
    state_dir = tmp_path / "state"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "machine.json").stat().st_mode) == 0o600
    assert make_agent(tmp_path / "other").machine_key != first.machine_key


def test_machine_id_is_saved_after_registration(tmp_path):
    agent = make_agent(tmp_path)
    agent.heartbeat_step()
    data = json.loads((tmp_path / "state" / "machine.json").read_text())
    assert data == {
        "machine_key": agent.machine_key,
        "machine_id": "m-1",
        "agent_key": "dcm.m-1.key1",
        "platform_ca": None,
    }
    assert stat.S_IMODE((tmp_path / "state" / "machine.json").stat().st_mode) == 0o600


def test_corrupt_state_file_is_kept_aside(tmp_path, caplog):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "machine.json").write_text("{not json")
    agent = make_agent(tmp_path)
    assert agent.machine_key.startswith("mk-")
    assert (state / "machine.json.corrupt").read_text() == "{not json"
    assert "new machine_key" in caplog.text


# --- heartbeat loop ------------------------------------------------------------------------


def test_first_step_logs_in_registers_and_heartbeats(tmp_path):
    client = FakeClient(interval_s=7.0)
    agent = make_agent(tmp_path, client, price_per_gpu_hour=0.4)
    assert agent.heartbeat_step() == 7.0
    assert client.calls == ["login", "register_machine", "heartbeat"]
    assert client.registrations == [(agent.machine_key, "gpu-box--1")]  # hostname made a valid name
    assert client.heartbeats[0][0] == "m-1"
    assert agent.heartbeat_step() == 7.0
    assert client.calls[3:] == ["heartbeat"]


def test_heartbeat_interval_follows_the_platform(tmp_path):
    client = FakeClient(interval_s=7.0)
    client.script["heartbeat"] = [{"status": "online", "heartbeat_interval_s": 2.5}, {"status": "online"}]
    agent = make_agent(tmp_path, client)
    assert agent.heartbeat_step() == 2.5
    assert agent.heartbeat_step() == 2.5  # an answer without an interval keeps the last one


def test_heartbeat_404_reregisters_with_the_same_key(tmp_path, caplog):
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    agent.heartbeat_step()
    client.script["heartbeat"] = [dcluster.ApiError(404, "machine not found")]
    client.script["register_machine"] = [{"id": "m-2", "heartbeat_interval_s": 7.0}]
    assert agent.heartbeat_step() == 1.0  # short backoff, then register again
    assert agent.machine_id is None and "registering again" in caplog.text
    assert agent.heartbeat_step() == 7.0
    assert [k for k, _ in client.registrations] == [agent.machine_key] * 2
    assert client.calls.count("login") == 1
    assert agent.machine_id == "m-2" and client.heartbeats[-1][0] == "m-2"


def test_404_after_an_outage_reregisters_without_the_outage_delay(tmp_path):
    client = FakeClient(interval_s=5.0)
    agent = make_agent(tmp_path, client)
    agent.heartbeat_step()
    client.script["heartbeat"] = [dcluster.PlatformUnreachable("refused")] * 5 + [dcluster.ApiError(404, "unknown")]
    assert [agent.heartbeat_step() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert agent.heartbeat_step() == 1.0  # the platform restarted and forgot us: come back soon
    assert agent.heartbeat_step() == 5.0 and len(client.registrations) == 2


def test_the_password_enrolls_once_then_the_machine_key_alone_is_used(tmp_path):
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    assert agent.holds_password
    agent.heartbeat_step()
    assert client.token == "dcm.m-1.key1" and not agent.holds_password  # forgotten once enrolled
    restarted_client = FakeClient()
    restarted = agent_mod.Agent(
        restarted_client,
        make_settings(tmp_path).model_copy(update={"password": None}),
        detect_fn=lambda: SPEC,
        usage_fn=lambda n: domain.MachineUsage(active_leases=n),
        sleep=FakeWaits().sleep,
        clock=FakeWaits().clock,
        rand=lambda: 1.0,
    )
    assert restarted.heartbeat_step() == 7.0
    assert restarted_client.calls == ["register_machine", "heartbeat"]  # no sign-in: the saved key
    assert restarted_client.token == "dcm.m-1.key1" and restarted.machine_id == "m-1"


def test_a_refused_machine_key_stops_the_agent_and_forgets_the_key(tmp_path, caplog):
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    agent.heartbeat_step()
    client.script["heartbeat"] = [dcluster.ApiError(401, "this agent key of machine m-1 is revoked")]
    agent.heartbeat_step()
    assert agent.revoked and agent.stopping.is_set()
    assert client.calls == ["login", "register_machine", "heartbeat", "heartbeat"]  # no silent re-enrollment
    assert json.loads((tmp_path / "state" / "machine.json").read_text())["agent_key"] is None
    assert "enroll the machine anew" in caplog.text and "key1" not in caplog.text


def test_without_key_or_password_the_agent_stops_and_says_why(tmp_path, caplog):
    client = FakeClient()
    agent = make_agent(tmp_path, client, password=None)
    agent.heartbeat_step()
    assert agent.revoked and client.calls == []
    assert "no agent key" in caplog.text


def test_unreachable_backs_off_then_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="worker.agent")
    client = FakeClient(interval_s=5.0)
    client.script["login"] = [dcluster.PlatformUnreachable("connection refused")] * 7
    waits = FakeWaits()
    agent = make_agent(tmp_path, client, waits)
    delays = [agent.heartbeat_step() for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 5.0]
    assert client.calls[-3:] == ["login", "register_machine", "heartbeat"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one warning per outage, not one per retry
    assert "reachable again" in caplog.text
    client.script["heartbeat"] = [dcluster.ApiError(503, "overloaded")]
    assert agent.heartbeat_step() == 1.0  # the backoff starts over after a success
    assert agent.heartbeat_step() == 5.0


def test_rate_limited_login_waits_as_told(tmp_path):
    client = FakeClient()
    client.script["login"] = [dcluster.ApiError(429, "too many failed logins", retry_after_s=60)]
    agent = make_agent(tmp_path, client)
    assert agent.heartbeat_step() == 60


def test_long_outage_is_reported_every_minute(tmp_path, caplog):
    client = FakeClient()
    client.script["login"] = [dcluster.PlatformUnreachable("refused")] * 10
    waits = FakeWaits()
    agent = make_agent(tmp_path, client, waits)
    for _ in range(10):
        waits.sleep(agent.heartbeat_step())
    assert sum(1 for r in caplog.records if r.levelno == logging.WARNING) == 3  # at 0, 61 and 121 s of 151


def test_wrong_password_keeps_retrying_without_leaking(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = FakeClient()
    client.script["login"] = [dcluster.ApiError(401, "Incorrect username or password")] * 3
    agent = make_agent(tmp_path, client)
    assert [agent.heartbeat_step() for _ in range(4)] == [1.0, 2.0, 4.0, 7.0]
    assert PASSWORD not in caplog.text and PASSWORD not in repr(agent.settings)
    assert "login failed" in caplog.text


def test_unexpected_errors_never_kill_the_loop(tmp_path):
    def broken_detect():
        raise RuntimeError("boom")

    client = FakeClient()
    agent = make_agent(tmp_path, client, detect_fn=broken_detect)
    assert agent.heartbeat_step() == 1.0
    assert client.calls == ["login"]


# --- work polling --------------------------------------------------------------------------


def test_poll_waits_for_registration(tmp_path):
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    assert agent.poll_step() == 0.2 and "poll_work" not in client.calls


def test_poll_dispatches_items_by_kind(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="worker.agent.agent")
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    agent.heartbeat_step()
    handled = []
    agent.work_handlers["start_node"] = handled.append
    agent.work_handlers["explode"] = lambda item: 1 / 0
    items = [
        {"id": "w-1", "kind": "start_node", "payload": {}},
        {"id": "w-2", "kind": "explode", "payload": {}},
        {"id": "w-3", "kind": "mystery", "payload": {}},
    ]
    client.script["poll_work"] = [items]
    assert agent.poll_step() == 0.0
    assert handled == [items[0]]
    assert "w-2" in caplog.text and "ZeroDivisionError" in caplog.text  # logged, not raised
    assert "w-3" in caplog.text and "'mystery'" in caplog.text


def test_poll_errors_back_off_and_empty_instant_answers_are_throttled(tmp_path):
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    agent.heartbeat_step()
    client.script["poll_work"] = [dcluster.PlatformUnreachable("x"), dcluster.ApiError(502, "bad gateway"), [], []]
    assert [agent.poll_step(), agent.poll_step()] == [1.0, 2.0]
    assert agent.poll_step() == 1.0  # empty at once (fake clock did not move): no long poll, pace it


def test_platform_recovery_ends_the_poll_backoff(tmp_path):
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    agent.heartbeat_step()
    agent.poll_wakeup.clear()
    client.script["poll_work"] = [dcluster.PlatformUnreachable("refused")] * 4
    assert [agent.poll_step() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    client.script["heartbeat"] = [dcluster.PlatformUnreachable("refused")]
    agent.heartbeat_step()
    assert not agent.poll_wakeup.is_set()
    agent.heartbeat_step()  # the platform is back
    assert agent.poll_wakeup.is_set() and agent.poll_backoff_attempts() == 0


def test_poll_wait_returns_early_on_wakeup(tmp_path):
    agent = agent_mod.Agent(FakeClient(), make_settings(tmp_path), detect_fn=lambda: SPEC)  # real waits
    agent.poll_wakeup.set()
    started = time.monotonic()
    assert agent.wait(30, agent.poll_wakeup) is False
    assert time.monotonic() - started < 1 and not agent.poll_wakeup.is_set()
    threading.Timer(0.05, agent.stopping.set).start()
    assert agent.wait(30, agent.stopping) is True


# --- stop ----------------------------------------------------------------------------------


def test_run_then_stop_leaves_promptly(tmp_path):
    client = FakeClient(interval_s=0.01)
    agent = agent_mod.Agent(client, make_settings(tmp_path, stop_join_s=3.0, poll_wait_s=30), detect_fn=lambda: SPEC)
    handled = threading.Event()
    agent.work_handlers["start_node"] = lambda item: handled.set()
    runner = threading.Thread(target=agent.run)
    runner.start()
    client.work.put({"id": "w-1", "kind": "start_node", "payload": {}})
    assert handled.wait(5)
    wait_for(lambda: len(client.heartbeats) >= 3, timeout_s=5, interval_s=0.01, what="3 heartbeats")
    started = time.monotonic()
    agent.stop()  # the poll thread is inside a 30 s long poll
    runner.join(5)
    assert not runner.is_alive()
    assert time.monotonic() - started < 1.0  # no waiting on the in-flight long poll
    assert client.left == [("m-1", 5.0)]
    agent.stop()  # idempotent
    assert len(client.left) == 1


def test_stop_before_registration_does_not_leave(tmp_path):
    client = FakeClient()
    agent = make_agent(tmp_path, client)
    agent.stop()
    assert client.left == []


def test_leave_failure_is_swallowed(tmp_path, caplog):
    client = FakeClient()
    client.script["leave"] = [dcluster.PlatformUnreachable("refused")]
    agent = make_agent(tmp_path, client)
    agent.heartbeat_step()
    agent.stop()
    assert "could not tell the platform" in caplog.text


def test_backoff_doubles_to_30_with_jitter():
    full = dcluster.Backoff(rand=lambda: 1.0)
    assert [full.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    full.reset()
    assert full.next() == 1
    half = dcluster.Backoff(rand=lambda: 0.0)
    assert [half.next() for _ in range(3)] == [0.5, 1, 2]


# --- command line --------------------------------------------------------------------------


def test_detect_only_prints_the_spec(capsys):
    assert agent_cli.main(["--detect-only", "--gpus", "2", "--gpu-model", "RTX 4090"]) == 0
    spec = domain.MachineSpec.model_validate_json(capsys.readouterr().out)
    assert len(spec.gpus) == 2 and spec.gpus_declared


def test_password_is_never_a_command_line_argument(monkeypatch):
    monkeypatch.delenv(agent_cli.PASSWORD_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        agent_cli.main(["--platform-url", "http://x", "--username", "prov1", "--password", PASSWORD])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        agent_cli.main(["--platform-url", "http://x", "--username", "prov1"])
    assert e.value.code == 2


def test_an_enrolled_machine_needs_no_password_and_enroll_replaces_its_key(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(agent_cli.PASSWORD_ENV, raising=False)
    state_dir = tmp_path / "state"
    base = ["--platform-url", "http://x", "--username", "prov1", "--state-dir", str(state_dir)]
    with pytest.raises(SystemExit) as e:  # not enrolled, no password
        agent_cli.main(base)
    assert e.value.code == 2 and "not enrolled yet" in capsys.readouterr().err
    state = agent_mod.MachineState(state_dir)
    state.agent_key = "dcm.m-000000000001.secret"
    state.save()
    assert state_mod.has_agent_key(state_dir)
    with pytest.raises(SystemExit) as e:  # --enroll needs the password
        agent_cli.main([*base, "--enroll"])
    assert e.value.code == 2 and "--enroll needs" in capsys.readouterr().err
    state_mod.forget_agent_key(state_dir)
    assert agent_mod.MachineState(state_dir).agent_key is None
    assert agent_mod.MachineState(state_dir).machine_key == state.machine_key  # the same machine


def test_password_from_file_or_env(tmp_path, monkeypatch):
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    f.chmod(0o600)
    assert agent_cli.read_password(f) == PASSWORD
    monkeypatch.setenv(agent_cli.PASSWORD_ENV, "from-env")
    assert agent_cli.read_password(None) == "from-env"


def test_invalid_name_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv(agent_cli.PASSWORD_ENV, PASSWORD)
    with pytest.raises(SystemExit) as e:
        agent_cli.main(["--platform-url", "http://x", "--username", "prov1", "--name", "bad name!", *PRICED])
    assert e.value.code == 2
    assert PASSWORD not in capsys.readouterr().err


PRICED = ("--price-per-gpu-hour", "0.5", "--price-per-cpu-hour", "0.01")


def test_a_machine_is_never_offered_at_a_price_it_was_not_given(monkeypatch, capsys):
    """No default price: a forgotten flag used to offer the machine for free."""
    monkeypatch.setenv(agent_cli.PASSWORD_ENV, PASSWORD)
    with pytest.raises(SystemExit) as e:
        agent_cli.main(["--platform-url", "http://x", "--username", "prov1", "--price-per-cpu-hour", "0"])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2
        and "--price-per-gpu-hour required" in err
        and "--price-per-cpu-hour" not in err.split("error:")[1]
    )


def test_every_option_can_come_from_a_dcluster_variable_and_a_flag_wins(monkeypatch):
    env = {
        "DCLUSTER_PLATFORM_URL": "https://market.example",
        "DCLUSTER_PRICE_PER_GPU_HOUR": "0.8",
        "DCLUSTER_GPUS": "2",
        "DCLUSTER_ENROLL": "yes",
        "DCLUSTER_RUNTIME": "bwrap",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = agent_cli.build_parser().parse_args(["--gpus", "4"])
    assert (args.platform_url, args.price_per_gpu_hour, args.gpus, args.enroll, args.runtime) == (
        "https://market.example",
        0.8,
        4,
        True,
        "bwrap",
    )
    monkeypatch.setenv("DCLUSTER_RUNTIME", "podman")
    with pytest.raises(SystemExit):
        agent_cli.build_parser()
    monkeypatch.setenv("DCLUSTER_RUNTIME", "bwrap")
    monkeypatch.setenv("DCLUSTER_LEASE_PIDS", "many")
    with pytest.raises(SystemExit):
        agent_cli.build_parser()


def test_version_names_the_package_ray_and_python(capsys):
    with pytest.raises(SystemExit) as e:
        agent_cli.main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("dcluster-agent ") and "ray 2." in out and "python 3." in out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_exits_zero(tmp_path):
    """The real process against an unreachable platform: it keeps retrying, and SIGTERM ends it with 0."""
    env = {**os.environ, agent_cli.PASSWORD_ENV: PASSWORD}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.agent.cli",
            "--platform-url",
            f"http://127.0.0.1:{_closed_port()}",
            "--username",
            "prov1",
            "--state-dir",
            str(tmp_path / "state"),
            "--gpus",
            "0",
            *PRICED,
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    seen = []
    try:
        deadline = time.monotonic() + 30
        while not any("retrying with backoff" in s for s in seen) and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
        assert any("retrying with backoff" in s for s in seen), "".join(seen)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)  # EOF once the process is gone
        proc.stderr.close()
    while not lines.empty():
        seen.append(lines.get())
    assert PASSWORD not in "".join(seen)
    assert (tmp_path / "state" / "machine.json").exists()


# --- leases --------------------------------------------------------------------------------

LEASE_TOKEN = "lease-token-" + "q" * 20
CLUSTER_ID = "c-" + "b" * 12


def _lease_id() -> str:
    return "l-" + os.urandom(6).hex()


def _open_item(item_id: str, lease_id: str, role: str = "head") -> dict:
    return {
        "id": item_id,
        "kind": protocol.LEASE_OPEN,
        "payload": {"lease_id": lease_id, "cluster_id": CLUSTER_ID, "role": role, "ray_auth_token": LEASE_TOKEN},
    }


def _exec_item(item_id: str, lease_id: str, cmd: str, **kw) -> dict:
    return {
        "id": item_id,
        "kind": protocol.LEASE_EXEC,
        "payload": {"lease_id": lease_id, "op": "run", "cmd": cmd, **kw},
    }


def _close_item(item_id: str, lease_id: str) -> dict:
    return {"id": item_id, "kind": protocol.LEASE_CLOSE, "payload": {"lease_id": lease_id, "grace_s": 0.5}}


@pytest.fixture
def lease_root(tmp_path):
    root = tmp_path / "leases"
    yield root
    # Whatever a failing test left running: stopped by its lease tags, never by name.
    for lease_dir in root.glob("l-*"):
        procs.stop_owned(leases.owner_tag(lease_dir.name), grace_s=0.5)


def test_a_runtime_whose_leases_run_an_image_registers_the_image_s_versions(tmp_path):
    """Leases in a provider's docker image run its Ray and Python (read from the image when the agent starts):
    those are what the machine registers, for placement to match; elsewhere the agent's own, as detected."""

    class InAnImage(unsandboxed.UnsandboxedRuntime):
        def lease_versions(self):
            return ("2.9.3", "3.10.12")

    for runtime, want in (
        (InAnImage(), ("2.9.3", "3.10.12")),
        (unsandboxed.UnsandboxedRuntime(), ("2.60.0", "3.11.2")),
    ):
        client = FakeClient()
        agent = agent_mod.Agent(
            client,
            make_settings(tmp_path),
            detect_fn=lambda: SPEC.model_copy(update={"ray_version": "2.60.0", "python_version": "3.11.2"}),
            usage_fn=lambda n: domain.MachineUsage(active_leases=n),
            sleep=FakeWaits().sleep,
            lease_runner=leases.LeaseRunner(tmp_path / "leases", node_ip="127.0.0.1", runtime=runtime),
        )
        agent.heartbeat_step()
        assert (client.specs[-1].ray_version, client.specs[-1].python_version) == want


def make_lease_agent(tmp_path, lease_root, client, waits=None, **kw):
    runner = leases.LeaseRunner(lease_root, node_ip="127.0.0.1")
    waits = waits or FakeWaits()
    agent = agent_mod.Agent(
        client,
        make_settings(tmp_path, **kw),
        detect_fn=lambda: SPEC,
        usage_fn=lambda n: domain.MachineUsage(active_leases=n),
        sleep=waits.sleep,
        clock=waits.clock,
        rand=lambda: 1.0,
        lease_runner=runner,
    )
    return agent, runner


def test_lease_items_run_in_order_and_are_answered(tmp_path, lease_root):
    client = FakeClient()
    agent, runner = make_lease_agent(tmp_path, lease_root, client)
    agent.heartbeat_step()
    lease_id = _lease_id()
    agent.handle_work(_open_item("w-1", lease_id))
    opened = client.wait_results(1)["w-1"]
    assert opened["ok"] and opened["data"]["node_ip"] == "127.0.0.1" and "gcs" in opened["data"]["ports"]
    assert agent.active_leases() == 1
    agent.heartbeat_step()
    assert client.heartbeats[-1][1].active_leases == 1
    put = {
        "id": "w-3",
        "kind": protocol.LEASE_EXEC,
        "payload": {"lease_id": lease_id, "op": "put_file", "path": "~/f", "content_b64": "dHdvCg=="},
    }
    for item in (
        _exec_item("w-2", lease_id, "sleep 0.3; echo one > ~/log"),
        put,
        _exec_item("w-4", lease_id, "cat ~/f >> ~/log; cat ~/log; exit 5"),
    ):
        agent.handle_work(item)
    client.wait_results(4)
    agent.handle_work(_close_item("w-5", lease_id))
    results = client.wait_results(5)
    assert [item_id for _, item_id, _ in client.results] == ["w-1", "w-2", "w-3", "w-4", "w-5"]
    assert all(machine_id == "m-1" for machine_id, _, _ in client.results)
    assert results["w-2"]["ok"] and results["w-3"]["ok"]
    assert results["w-4"]["output"] == "one\ntwo\n" and results["w-4"]["exit_code"] == 5
    assert not results["w-4"]["ok"]
    assert results["w-5"]["ok"] and agent.active_leases() == 0 and not (lease_root / lease_id).exists()
    # The lease's thread ends when idle.
    wait_for(lambda: agent.lease_queues() == {}, timeout_s=5, interval_s=0.01, what="no lease queue left")


def _running(lease_id: str, command: str) -> bool:
    """Whether a process of the lease runs command (its arguments, joined)."""
    return any(" ".join(p.cmdline()) == command for p in procs.owned_processes(leases.owner_tag(lease_id)))


def test_a_close_does_not_wait_behind_the_leases_running_command(tmp_path, lease_root):
    client = FakeClient()
    agent, runner = make_lease_agent(tmp_path, lease_root, client)
    agent.heartbeat_step()
    lease_id = _lease_id()
    agent.handle_work(_open_item("w-1", lease_id))
    client.wait_results(1)
    agent.handle_work(_exec_item("w-2", lease_id, "setsid sleep 60 & sleep 60", timeout_s=120))
    agent.handle_work(_exec_item("w-3", lease_id, "echo queued-after"))
    wait_for(lambda: _running(lease_id, "sleep 60"), timeout_s=10, interval_s=0.01, what="w-2 running")
    started = time.monotonic()
    agent.handle_work(_close_item("w-4", lease_id))
    results = client.wait_results(4, timeout_s=20)  # every item answered
    assert results["w-4"]["ok"] and time.monotonic() - started < 10  # not after the 60 s command
    assert not results["w-2"]["ok"]  # stopped by the close, its setsid child too
    assert not procs.owned_processes(leases.owner_tag(lease_id))
    assert not results["w-3"]["ok"] and "queued-after" not in results["w-3"]["output"]  # found the lease closed


def test_a_long_command_blocks_neither_polling_nor_other_leases(tmp_path, lease_root):
    client = FakeClient()
    agent, runner = make_lease_agent(tmp_path, lease_root, client)
    agent.heartbeat_step()
    slow, fast = _lease_id(), _lease_id()
    started = time.monotonic()
    agent.handle_work(_open_item("w-1", slow))
    agent.handle_work(_open_item("w-2", fast, role="worker"))
    agent.handle_work(_exec_item("w-3", slow, "while [ ! -e ~/go ]; do sleep 0.02; done; echo slow-done", timeout_s=30))
    agent.handle_work(_exec_item("w-4", fast, "echo fast-done"))
    assert time.monotonic() - started < 0.5  # handlers only queue: the poll thread never waits on a command
    results = client.wait_results(3)
    assert results["w-4"]["output"] == "fast-done\n" and "w-3" not in results
    (lease_root / slow / "home" / "go").touch()
    assert client.wait_results(4)["w-3"]["output"] == "slow-done\n"
    agent.handle_work(_close_item("w-5", slow))
    agent.handle_work(_close_item("w-6", fast))
    results = client.wait_results(6)
    assert results["w-5"]["ok"] and results["w-6"]["ok"] and runner.lease_ids() == []


def test_bad_lease_items_become_failed_results(tmp_path, lease_root, caplog):
    caplog.set_level(logging.DEBUG)
    client = FakeClient()
    agent, runner = make_lease_agent(tmp_path, lease_root, client)
    agent.heartbeat_step()
    short_token = "too-short-token"
    lease_id = _lease_id()
    bad_open = _open_item("w-1", lease_id)
    bad_open["payload"]["ray_auth_token"] = short_token
    items = [
        bad_open,
        _exec_item("w-2", lease_id, "true"),  # never opened
        {
            "id": "w-3",
            "kind": protocol.LEASE_EXEC,
            "payload": {"lease_id": lease_id, "op": "put_file", "path": "~/f", "content_b64": "%%%"},
        },
        {"id": "w-4", "kind": protocol.LEASE_CLOSE, "payload": "not an object"},
        {"id": "w-5", "kind": protocol.LEASE_EXEC, "payload": {"lease_id": lease_id, "op": "run", "rm": "-rf"}},
        {"id": "w-6", "kind": protocol.LEASE_OPEN, "payload": {"lease_id": "../../etc"}},
    ]
    for item in items:
        agent.handle_work(item)
    results = client.wait_results(len(items))
    assert not any(r["ok"] for r in results.values())
    assert "ray_auth_token" in results["w-1"]["output"] and "not open" in results["w-2"]["output"]
    assert "invalid" in results["w-4"]["output"] and "rm" in results["w-5"]["output"]
    assert "lease_id" in results["w-6"]["output"]
    assert short_token not in caplog.text and short_token not in json.dumps(results)
    assert runner.lease_ids() == []


def test_result_posting_retries_then_gives_up_or_drops_on_404(tmp_path, lease_root, caplog):
    caplog.set_level(logging.INFO, logger="worker.agent")
    client = FakeClient()
    waits = FakeWaits()
    agent, _ = make_lease_agent(tmp_path, lease_root, client, waits)
    agent.heartbeat_step()
    result = protocol.WorkResult(ok=True, exit_code=0)
    client.script["post_result"] = [dcluster.PlatformUnreachable("refused"), dcluster.ApiError(503, "busy")]
    assert agent.post_result("w-1", result) is True
    assert client.calls.count("post_result") == 3 and waits.waits[-2:] == [1.0, 2.0]
    client.script["post_result"] = [dcluster.ApiError(404, "no such item")]
    assert agent.post_result("w-2", result) is False and "no longer waits" in caplog.text
    client.script["post_result"] = [dcluster.PlatformUnreachable("refused")] * lease_work.RESULT_POST_ATTEMPTS
    assert agent.post_result("w-3", result) is False and "gave up" in caplog.text
    assert [item_id for _, item_id, _ in client.results] == ["w-1"]


def _run_agent(tmp_path, lease_root, client):
    runner = leases.LeaseRunner(lease_root, node_ip="127.0.0.1")
    agent = agent_mod.Agent(
        client, make_settings(tmp_path, poll_wait_s=30), detect_fn=lambda: SPEC, lease_runner=runner
    )  # real waits: stop() interrupts them
    agent.start()
    return agent, runner


def test_a_restart_keeps_the_leases_and_leaving_closes_them(tmp_path, lease_root):
    first_client = FakeClient(interval_s=0.05)
    first, _ = _run_agent(tmp_path, lease_root, first_client)
    kept = _lease_id()
    first_client.work.put(_open_item("w-1", kept))
    first_client.wait_results(1)
    first_client.work.put(_exec_item("w-2", kept, "setsid sleep 300 & echo $! > ~/pid"))
    first_client.wait_results(2)
    sleeper = int((lease_root / kept / "home" / "pid").read_text())
    first.stop(leave=False)  # SIGTERM: systemctl restart, an upgrade
    assert first_client.left == [] and procs.pid_alive(sleeper) and (lease_root / kept).exists()

    # A lease of an earlier run whose record is spoiled: cleaned up at the next start.
    earlier = leases.LeaseRunner(lease_root, node_ip="127.0.0.1")
    spoiled = _lease_id()
    earlier.open(protocol.LeaseOpen(lease_id=spoiled, cluster_id=CLUSTER_ID, role="worker", ray_auth_token=LEASE_TOKEN))
    earlier.run(spoiled, "setsid sleep 300 & echo $! > ~/pid", {}, 10)
    old_sleeper = int((lease_root / spoiled / "home" / "pid").read_text())
    (lease_root / spoiled / "lease.json").write_text("not json")

    client = FakeClient(interval_s=0.05)
    agent, runner = _run_agent(tmp_path, lease_root, client)
    wait_for(lambda: client.held, timeout_s=10, what="the first heartbeat")
    assert client.held[0] == [kept]  # the very first heartbeat holds the lease that ran on
    assert runner.lease_ids() == [kept] and procs.pid_alive(sleeper)
    assert not procs.pid_alive(old_sleeper) and not (lease_root / spoiled).exists()
    agent.stop()  # leaving: SIGINT, SIGUSR1 (`dcluster-agent leave`)
    assert not procs.pid_alive(sleeper) and runner.lease_ids() == [] and not (lease_root / kept).exists()
    assert client.left == [("m-1", 5.0)]


def test_client_posts_results_to_the_item_path():
    import httpx

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.raw_path.decode(), json.loads(request.content)))
        return httpx.Response(200 if request.url.path.endswith("/w-1") else 404, json={"detail": "gone"})

    with dcluster.Client("http://platform.test", transport=httpx.MockTransport(handler)) as client:
        body = protocol.WorkResult(ok=True, exit_code=0, output="up").model_dump(mode="json")
        client.post_result("m-1", "w-1", body)
        with pytest.raises(dcluster.ApiError) as err:
            client.post_result("m 2", "w-2", body)
    assert err.value.status_code == 404
    assert seen[0] == ("POST", "/v1/machines/m-1/results/w-1", body)
    assert seen[1][1] == "/v1/machines/m%202/results/w-2"


def test_a_lease_gets_its_cpus_share_of_the_ram_at_most_the_cap(tmp_path):
    settings = make_settings(tmp_path, lease_pids=512)
    assert settings.lease_limits(2, SPEC) == sandbox_base.LeaseLimits(cpus=2.0, memory_mb=8000, pids=512)
    assert settings.lease_limits(64, SPEC).memory_mb == 32000  # never more than the machine
    capped = make_settings(tmp_path, lease_memory_mb=4096)
    assert capped.lease_limits(2, SPEC).memory_mb == 4096
    assert capped.lease_limits(None, SPEC) == sandbox_base.LeaseLimits(cpus=None, memory_mb=4096, pids=4096)
    assert settings.lease_limits(2, None).memory_mb is None  # not registered yet: no share to take
