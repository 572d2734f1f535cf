"""A lease turns its own files against the agent (root), in real sandboxes: every attempt is seen to fail.

A root-only 0600 canary of random bytes lies outside every lease. Each attack points something the lease
can write (its command's log, its logs dir, its Ray session logs, its home, its temp dir) at the canary,
by a symbolic link, a hard link, a FIFO or a swap while the agent reads. What the agent answers (exec
answers, shipped logs, error texts) must hold none of the canary, say what it refused, and never hang;
the canary and its dir stay as they were.

The moves a sandbox does not let the lease make (its logs dir is a mount point; the canary is not in its
view, so it cannot hard-link it) are tried from inside and seen refused, then made from outside, as if
they had worked, to show the agent refuses them too.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from pathlib import Path

import pytest

from dcl_core import protocol
from tests.integration import sandboxes
from tests.waiting import wait_for
from worker.agent import lease_fs, lease_logs, leases

pytestmark = sandboxes.NEEDS_ROOT_AND_BWRAP
agent_dir = sandboxes.agent_dir


class Canary:
    """A root-only secret outside every lease; `intact()` says it is unchanged, file and dir."""

    def __init__(self, root: Path):
        self.dir = root / "canary-secrets"
        self.dir.mkdir(mode=0o700)
        self.path = self.dir / "canary"
        self.text = secrets.token_hex(32)
        self.path.write_text(self.text)
        self.path.chmod(0o600)
        self._before = self._state()

    def _state(self) -> tuple:
        f, d = self.path.stat(), self.dir.stat()
        return (
            f.st_mode,
            f.st_uid,
            f.st_nlink,
            d.st_mode,
            d.st_uid,
            sorted(os.listdir(self.dir)),
            self.path.read_text(),
        )

    def intact(self) -> bool:
        return self._state() == self._before

    def absent_from(self, *texts: object) -> bool:
        return all(self.text not in str(t) for t in texts)


@pytest.fixture(params=sandboxes.RUNTIMES)
def attack(request, agent_dir):
    runner = sandboxes.make_runner(agent_dir, request.param)
    canary = Canary(agent_dir)
    try:
        yield runner, canary
    finally:
        lease_fs.race_hook = None
        runner.close_all(grace_s=0.5)
        assert canary.intact()


def _log_of_this_command() -> str:
    return 'log="$(readlink /proc/$$/fd/1)"'


def test_a_command_that_swaps_its_log_for_a_link_gets_none_of_the_canary(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    result = runner.run(
        lease, f'{_log_of_this_command()}; echo before; ln -sf {canary.path} "$log"; echo after', timeout_s=60
    )
    assert canary.absent_from(result)
    assert not result.ok and result.exit_code == 0  # the command itself ran well; its answer is refused
    assert "before\nafter\n" in result.output and "was replaced while the command ran" in result.output
    assert runner.run(lease, "echo next", timeout_s=60).output.strip() == "next"  # the lease works on


def test_a_symlinked_logs_directory_is_refused(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    inside = runner.run(
        lease,
        f'{_log_of_this_command()}; logs="$(dirname "$log")"; mv "$logs" "$logs.old" 2>&1 || echo MOVE-REFUSED',
        timeout_s=60,
    )
    assert "MOVE-REFUSED" in inside.output, inside.output  # a mount point in the sandbox: it cannot be moved
    logs = runner.root / lease / "logs"
    os.rename(logs, logs.with_name("logs.old"))  # as if it had worked
    os.symlink(canary.dir, logs)
    result = runner.run(lease, "echo never", timeout_s=60)
    assert not result.ok and "the command was not run" in result.output
    assert "a directory on the way is a symbolic link: not followed" in result.output
    assert canary.absent_from(result) and canary.intact()  # no log was made in the canary's dir
    closed = runner.close(lease)
    assert closed.ok and canary.absent_from(closed)


def test_a_hard_link_in_place_of_the_log_is_not_read(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    inside = runner.run(
        lease, f'{_log_of_this_command()}; ln -f {canary.path} "$log" 2>&1 || echo LINK-REFUSED', timeout_s=60
    )
    assert "LINK-REFUSED" in inside.output and canary.absent_from(inside)  # not in its view: cannot be linked
    home = runner.root / lease / "home"
    answers = {}
    command = threading.Thread(
        target=lambda: answers.update(
            result=runner.run(lease, "echo mine; while [ ! -e ~/go ]; do sleep 0.05; done", timeout_s=60)
        )
    )
    command.start()
    log = runner.root / lease / "logs" / "0002-run.log"
    wait_for(lambda: log.exists() and log.read_text() == "mine\n", timeout_s=30, what="the command's output")
    log.unlink()  # as if the lease had hard-linked the canary at its log's name
    os.link(canary.path, log)
    (home / "go").touch()
    command.join(60)
    result = answers["result"]
    assert canary.absent_from(result) and not result.ok
    assert result.output.startswith("mine\n") and "was replaced while the command ran" in result.output
    log.unlink()


def test_a_fifo_in_place_of_the_log_never_holds_the_agent(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    started = time.monotonic()
    result = runner.run(
        lease,
        f'{_log_of_this_command()}; rm -f "$log"; mkfifo "$log"; '
        f"ln -sfn {canary.dir} ~/dir-link; ln -sf {canary.path} ~/file-link",
        timeout_s=60,
    )
    assert not result.ok and "was replaced while the command ran" in result.output
    closed = runner.close(lease)
    assert time.monotonic() - started < 30
    assert closed.ok, closed.output
    shipped = {f["name"]: f["text"] for f in closed.data["logs"]}
    assert shipped["commands/0001-run.log"] == lease_logs.NOT_SHIPPED + "not a regular file (a FIFO): not opened\n"
    assert canary.absent_from(result, closed) and canary.intact()  # the links in its home removed, not followed


def test_a_log_flipped_between_a_link_and_a_file_while_the_agent_reads_never_yields_the_canary(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    flipper = (
        f"{_log_of_this_command()}; echo out; "
        f'(for i in $(seq 500); do ln -sf {canary.path} "$log.l"; mv -f "$log.l" "$log"; '
        f'echo x > "$log.f"; mv -f "$log.f" "$log"; done) >/dev/null 2>&1 &'
    )
    answers = [runner.run(lease, flipper, timeout_s=60) for _ in range(8)]
    for result in answers:
        assert canary.absent_from(result)
        assert result.output.startswith("out\n")
    closed = runner.close(lease)
    assert closed.ok and canary.absent_from(closed)


def test_ray_session_logs_turned_into_links_fifos_and_swaps_ship_none_of_the_canary(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    temp = leases.temp_dir_for(lease)
    made = runner.run(
        lease,
        f"cd {temp} && mkdir -p s/logs && ln -sfn {temp}/s session_latest && cd s/logs && "
        f"echo driver > job-driver-ok.log && ln -s {canary.path} job-driver-link.log && "
        f"mkfifo worker-fifo.out && echo raylet > raylet.out && ln -s {canary.dir} old",
        timeout_s=60,
    )
    assert made.ok, made.output
    raylet = temp / "s" / "logs" / "raylet.out"

    def swap(stage, path):  # the lease wins the race on raylet.out: a link in its place once it was listed
        if stage == "opening" and path == str(raylet):
            raylet.unlink()
            os.symlink(canary.path, raylet)

    lease_fs.race_hook = swap
    started = time.monotonic()
    closed = runner.close(lease)
    assert closed.ok and time.monotonic() - started < 30
    shipped = {f["name"]: f["text"] for f in closed.data["logs"]}
    refused = lease_logs.NOT_SHIPPED
    assert shipped["ray/job-driver-ok.log"] == "driver\n"
    assert shipped["ray/job-driver-link.log"] == refused + "a symbolic link: not followed\n"
    assert shipped["ray/worker-fifo.out"] == refused + "not a regular file (a FIFO): not opened\n"
    assert shipped["ray/raylet.out"] == refused + "a symbolic link: not followed\n"
    assert "ray/old" in shipped and shipped["ray/old"].startswith(refused)  # a link to a dir, not followed
    assert canary.absent_from(closed) and not temp.exists()


def test_session_latest_pointing_outside_the_lease_ships_nothing_from_there(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    (canary.dir / "logs").mkdir()  # what a link out would find: the canary's dir, with logs
    os.link(canary.path, canary.dir / "logs" / "job-driver-x.log")
    temp = leases.temp_dir_for(lease)
    made = runner.run(lease, f"ln -sfn {canary.dir} {temp}/session_latest", timeout_s=60)
    assert made.ok, made.output
    closed = runner.close(lease)
    assert closed.ok and not [f for f in closed.data["logs"] if f["name"].startswith("ray/")]
    assert canary.absent_from(closed)
    os.unlink(canary.dir / "logs" / "job-driver-x.log")
    (canary.dir / "logs").rmdir()


def test_uploads_through_links_write_only_inside_the_lease(attack):
    runner, canary = attack
    lease = sandboxes.open_lease(runner)
    made = runner.run(lease, f"ln -s {canary.path} ~/cfg.yaml && ln -s {canary.dir} ~/d", timeout_s=60)
    assert made.ok, made.output
    replaced = runner.put_file(lease, "~/cfg.yaml", b"launcher config")
    assert replaced.ok, replaced.output
    cfg = runner.root / lease / "home" / "cfg.yaml"
    assert stat.S_ISREG(cfg.lstat().st_mode) and cfg.read_bytes() == b"launcher config"  # the link replaced
    through_dir = runner.put_file(lease, "~/d/x", b"x")
    assert not through_dir.ok and canary.absent_from(through_dir)  # the canary's dir is not in the lease's view
    assert canary.intact()


def test_a_temp_dir_planted_as_a_link_before_the_lease_opens_is_refused(attack):
    runner, canary = attack
    lease_id = "l-" + secrets.token_hex(6)
    planted = leases.temp_dir_for(lease_id)
    os.symlink(canary.dir, planted)
    try:
        with pytest.raises(leases.LeaseError) as info:
            sandboxes.open_lease(runner, lease_id=lease_id)
        assert "the directory is a symbolic link: not followed" in str(info.value)
        assert canary.absent_from(info.value) and canary.intact()
        assert lease_id not in runner.lease_ids()
    finally:
        if planted.is_symlink():
            planted.unlink()


def test_a_gpu_check_whose_log_is_swapped_reports_nothing_of_the_canary(attack):
    runner, canary = attack
    lease_id = "l-" + secrets.token_hex(6)
    runner.open(
        protocol.LeaseOpen(lease_id=lease_id, purpose=protocol.GPU_CHECK_LEASE, ray_auth_token="t" * 40, cpus=1)
    )
    result = runner.run(
        lease_id, f'{protocol.GPU_CHECK_COMMAND}; {_log_of_this_command()}; ln -sf {canary.path} "$log"', timeout_s=120
    )
    assert canary.absent_from(result) and not result.ok
    assert protocol.GPU_CHECK_MARKER in result.output  # what the check printed before the swap, from the agent's file
    assert "was replaced while the command ran" in result.output
    closed = runner.close(lease_id)
    assert closed.ok and canary.absent_from(closed)
