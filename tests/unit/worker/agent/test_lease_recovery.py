"""An agent restart on the same state dir: its leases are rebuilt from their records (lease_recovery.py), or
cleaned up when a record is not usable or the sandbox is gone. Runtime none here (real processes, tagged);
the bwrap runtime's reattach runs for real in tests/integration/test_lease_restarts.py."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from dcl_core import protocol, secret_files
from worker import procs
from worker.agent import leases

TOKEN = "tok-" + "r" * 28
CLUSTER = "c-" + "b" * 12


def _open(runner: leases.LeaseRunner) -> str:
    lease_id = "l-" + secrets.token_hex(6)
    runner.open(protocol.LeaseOpen(lease_id=lease_id, cluster_id=CLUSTER, role="worker", ray_auth_token=TOKEN))
    return lease_id


def _sleeper(runner: leases.LeaseRunner, lease_id: str) -> int:
    """A process of the lease that outlives the command that started it (its own session)."""
    assert runner.run(lease_id, "setsid sleep 300 & echo $! > ~/sleeper", {}, 10).ok
    return int((runner.root / lease_id / "home" / "sleeper").read_text())


@pytest.fixture
def root(tmp_path):
    return tmp_path / "state" / "leases"


@pytest.fixture
def make_runner(root):
    made = []

    def make() -> leases.LeaseRunner:
        runner = leases.LeaseRunner(root, node_ip="127.0.0.1", machine_id_fn=lambda: "m-1")
        made.append(runner)
        return runner

    yield make
    made[-1].close_all(grace_s=0.5)  # what a failing test left running: by tag


def test_a_restarted_runner_holds_the_leases_whose_processes_run(make_runner, root):
    previous = make_runner()
    lease_id = _open(previous)
    sleeper = _sleeper(previous, lease_id)
    ports = previous.ports_of(lease_id)
    # The agent stops for a restart here: `previous` is never closed. The next run starts on the same state dir.
    current = make_runner()
    found = current.recover()
    assert (found.kept, found.dropped) == ([lease_id], [])
    assert current.lease_ids() == [lease_id] and current.ports_of(lease_id) == ports
    assert procs.pid_alive(sleeper)
    again = current.run(lease_id, "echo still $HOME", {}, 10)
    assert again.ok and str(root / lease_id / "home") in again.output
    assert sorted(os.listdir(root / lease_id / "logs")) == ["0001-run.log", "0002-run.log"]  # none overwritten
    assert current.recover().kept == []  # held already
    closed = current.close(lease_id)
    assert closed.ok and not procs.pid_alive(sleeper) and not (root / lease_id).exists()


def _record(root: Path, lease_id: str) -> dict:
    return json.loads((root / lease_id / "lease.json").read_text())


def _corrupt(root: Path, lease_id: str) -> None:
    secret_files.write_secret_file(root / lease_id / "lease.json", b'{"lease_id": ')


def _foreign(root: Path, lease_id: str) -> None:  # a record that claims another lease (copied, or planted)
    record = _record(root, lease_id)
    record["lease_id"] = "l-" + "0" * 12
    secret_files.write_secret_file(root / lease_id / "lease.json", json.dumps(record))


def _open_to_others(root: Path, lease_id: str) -> None:  # anyone could have written it
    os.chmod(root / lease_id / "lease.json", 0o666)


def _link(root: Path, lease_id: str) -> None:  # never followed
    record = root / lease_id / "lease.json"
    os.replace(record, root / lease_id / "elsewhere.json")
    record.symlink_to(root / lease_id / "elsewhere.json")


def _rebooted(root: Path, lease_id: str) -> None:  # the sandbox is gone: recorded in another boot
    record = _record(root, lease_id)
    record["sandbox"]["boot_id"] = "another-boot"
    secret_files.write_secret_file(root / lease_id / "lease.json", json.dumps(record))


def _missing(root: Path, lease_id: str) -> None:
    (root / lease_id / "lease.json").unlink()


@pytest.mark.parametrize("spoil", [_corrupt, _foreign, _open_to_others, _link, _rebooted, _missing])
def test_a_lease_whose_record_is_unusable_or_sandbox_gone_is_stopped_and_removed(make_runner, root, spoil):
    previous = make_runner()
    kept, spoiled = _open(previous), _open(previous)
    kept_sleeper, spoiled_sleeper = _sleeper(previous, kept), _sleeper(previous, spoiled)
    (root / "not-a-lease").mkdir()
    spoil(root, spoiled)
    current = make_runner()
    found = current.recover()
    assert (found.kept, found.dropped) == ([kept], [spoiled])
    assert current.lease_ids() == [kept] and procs.pid_alive(kept_sleeper)
    assert not procs.pid_alive(spoiled_sleeper)
    assert not (root / spoiled).exists() and not Path("/tmp/dcl-" + spoiled).exists()
    assert (root / "not-a-lease").exists()


def test_a_closing_runner_reattaches_nothing(make_runner, root):
    previous = make_runner()
    _open(previous)
    current = make_runner()
    current.close_all()
    assert current.recover().kept == [] and current.lease_ids() == []
    make_runner().recover()  # the fixture's last runner holds it, and closes it
