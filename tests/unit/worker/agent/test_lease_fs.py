"""worker.agent.lease_fs: every way a lease could turn a path of its own against the agent (root), refused.

The lease's moves are made here directly on the files (as its uid would make them); tests/integration/
test_lease_file_attacks.py makes them from inside real sandboxes.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import threading
from pathlib import Path

import pytest

from worker.agent import lease_fs


@pytest.fixture
def canary(tmp_path) -> tuple[Path, bytes]:
    """A 0600 file of random bytes outside the lease, in a 0700 dir of its own."""
    secret_dir = tmp_path / "agent-secrets"
    secret_dir.mkdir(mode=0o700)
    path = secret_dir / "canary"
    content = secrets.token_hex(32).encode()
    path.write_bytes(content)
    path.chmod(0o600)
    return path, content


@pytest.fixture
def lease(tmp_path) -> Path:
    """The agent's lease dir (the anchor) with the lease's writable `logs` in it."""
    root = tmp_path / "l-000000000001"
    (root / "logs").mkdir(parents=True)
    return root


@pytest.fixture(autouse=True)
def no_hook():
    yield
    lease_fs.race_hook = None


def _refused(fn) -> lease_fs.Refused:
    with pytest.raises(lease_fs.Refused) as info:
        fn()
    return info.value


def test_a_regular_file_of_the_lease_is_read(lease):
    (lease / "logs" / "a.log").write_text("x" * 100 + "END")
    tail = lease_fs.read_tail(lease, "logs/a.log", 10)
    assert tail == lease_fs.Tail("xxxxxxxEND", 103, True)


def test_a_symlink_in_place_of_the_file_is_refused(lease, canary):
    os.symlink(canary[0], lease / "logs" / "a.log")
    err = _refused(lambda: lease_fs.read_tail(lease, "logs/a.log", 1000))
    assert err.reason == "a symbolic link: not followed"
    assert canary[1].decode() not in str(err)


def test_a_symlinked_directory_on_the_way_is_refused(lease, canary):
    os.rename(lease / "logs", lease / "logs.old")
    os.symlink(canary[0].parent, lease / "logs")
    err = _refused(lambda: lease_fs.read_tail(lease, "logs/canary", 1000))
    assert "a directory on the way is a symbolic link" in err.reason
    assert _refused(lambda: lease_fs.names(lease, "logs")).reason.startswith("a directory on the way")


def test_a_hard_link_is_refused(lease, canary):
    os.link(canary[0], lease / "logs" / "a.log")
    assert (
        _refused(lambda: lease_fs.read_tail(lease, "logs/a.log", 1000)).reason == "a file with 2 hard links: not read"
    )


def test_a_fifo_or_a_socket_is_refused_without_waiting(lease):
    os.mkfifo(lease / "logs" / "fifo.log")  # no writer: an open for reading would block forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(lease / "logs" / "sock.log"))
    answers: dict[str, str] = {}

    def read_both():
        for name in ("fifo.log", "sock.log"):
            answers[name] = _refused(lambda n=name: lease_fs.read_tail(lease, f"logs/{n}", 1000)).reason

    reader = threading.Thread(target=read_both, daemon=True)
    reader.start()
    reader.join(10)
    server.close()
    assert answers == {
        "fifo.log": "not a regular file (a FIFO): not opened",
        "sock.log": "not a regular file (a socket): not opened",
    }


def test_paths_that_climb_out_or_start_at_the_root_are_refused(lease):
    for bad in ("../etc/passwd", "logs/../../x", "/etc/shadow"):
        assert (
            _refused(lambda b=bad: lease_fs.read_tail(lease, b, 10)).reason
            == "not a path beneath the lease's directory"
        )


def test_a_file_swapped_for_a_link_just_before_it_is_opened_is_refused(lease, canary):
    log = lease / "logs" / "a.log"
    log.write_text("harmless")

    def swap(stage, path):  # the lease wins the race: the check passed, the name changes before the open
        if stage == "opening":
            os.unlink(log)
            os.symlink(canary[0], log)

    lease_fs.race_hook = swap
    err = _refused(lambda: lease_fs.read_tail(lease, "logs/a.log", 1000))
    assert err.reason == "a symbolic link: not followed"


def test_a_directory_swapped_for_a_link_after_it_was_opened_changes_nothing(lease, canary):
    (lease / "logs" / "sub").mkdir()
    (lease / "logs" / "sub" / "a.log").write_text("mine")

    def swap(stage, path):  # `sub` already opened: the walk goes on in the directory it opened
        if stage == "walked" and path.endswith("/sub"):
            os.rename(lease / "logs" / "sub", lease / "logs" / "old")
            os.symlink(canary[0].parent, lease / "logs" / "sub")
            (lease / "logs" / "old" / "a.log").unlink()
            os.symlink(canary[0], lease / "logs" / "old" / "a.log")

    lease_fs.race_hook = swap
    assert _refused(lambda: lease_fs.read_tail(lease, "logs/sub/a.log", 1000)).reason == "a symbolic link: not followed"
    lease_fs.race_hook = None
    assert (
        "a directory on the way is a symbolic link"
        in _refused(lambda: lease_fs.read_tail(lease, "logs/sub/canary", 1000)).reason
    )


def test_a_command_log_is_read_through_the_agents_own_descriptor_whatever_the_name_becomes(lease, canary):
    os.symlink(canary[0], lease / "logs" / "0001-run.log")  # planted before the command: removed, not followed
    fd = lease_fs.create_log(lease, "logs", "0001-run.log", None, None)
    try:
        assert canary[0].read_bytes() == canary[1]
        with open(lease / "logs" / "0001-run.log", "ab") as f:  # the command writes its output
            f.write(b"output\n")
        assert lease_fs.same_file(fd, lease, "logs/0001-run.log")
        os.unlink(lease / "logs" / "0001-run.log")  # ... then swaps its log for a link to the canary
        os.symlink(canary[0], lease / "logs" / "0001-run.log")
        assert lease_fs.tail_of(fd, 1000).text == "output\n"
        assert not lease_fs.same_file(fd, lease, "logs/0001-run.log")
        os.unlink(lease / "logs" / "0001-run.log")  # or for a hard link to it
        os.link(canary[0], lease / "logs" / "0001-run.log")
        assert lease_fs.tail_of(fd, 1000).text == "output\n"
        assert not lease_fs.same_file(fd, lease, "logs/0001-run.log")
    finally:
        os.close(fd)


def test_a_log_name_taken_by_a_directory_is_refused_by_name(lease):
    (lease / "logs" / "0001-run.log").mkdir()
    (lease / "logs" / "0001-run.log" / "x").write_text("x")
    err = _refused(lambda: lease_fs.create_log(lease, "logs", "0001-run.log", None, None))
    assert "cannot make the command's log" in err.reason


def test_the_log_belongs_to_the_lease_user(lease):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    fd = lease_fs.create_log(lease, "logs", "0001-run.log", 1_234_567, 1_234_567)
    os.close(fd)
    info = (lease / "logs" / "0001-run.log").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1_234_567, 1_234_567, 0o600)


def test_make_dir_never_changes_what_a_link_points_to(tmp_path, canary):
    before = canary[0].parent.stat()
    os.symlink(canary[0].parent, tmp_path / "dcl-l-000000000002")
    err = _refused(lambda: lease_fs.make_dir(tmp_path, "dcl-l-000000000002", uid=None, gid=None, mode=0o777))
    assert "is a symbolic link" in err.reason
    after = canary[0].parent.stat()
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)


def test_make_dir_refuses_a_directory_of_another_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    (tmp_path / "dcl-l-000000000003").mkdir()
    os.chown(tmp_path / "dcl-l-000000000003", 4242, 4242)
    err = _refused(lambda: lease_fs.make_dir(tmp_path, "dcl-l-000000000003", uid=1_234_567, gid=1_234_567, mode=0o700))
    assert "belongs to uid 4242" in err.reason
    lease_fs.make_dir(tmp_path, "dcl-l-000000000003", uid=1_234_567, gid=1_234_567, mode=0o700, owners=(4242,))
    assert (tmp_path / "dcl-l-000000000003").stat().st_uid == 1_234_567


def test_give_refuses_a_link(lease, canary):
    os.symlink(canary[0], lease / "ray_auth_token")
    err = _refused(lambda: lease_fs.give(lease, "ray_auth_token", uid=None, gid=None, mode=0o644))
    assert "is a symbolic link" in err.reason
    assert stat.S_IMODE(canary[0].stat().st_mode) == 0o600


def test_remove_tree_removes_links_not_what_they_point_to(tmp_path, lease, canary):
    (lease / "home").mkdir()
    os.symlink(canary[0], lease / "home" / "file-link")
    os.symlink(canary[0].parent, lease / "home" / "dir-link")
    os.link(canary[0], lease / "logs" / "hard-link")
    lease_fs.remove_tree(lease)
    assert not lease.exists()
    assert canary[0].read_bytes() == canary[1]
    temp = tmp_path / "dcl-l-000000000004"
    os.symlink(canary[0].parent, temp)  # the temp dir itself replaced by a link
    lease_fs.remove_tree(temp)
    assert not temp.is_symlink() and canary[0].read_bytes() == canary[1]
    lease_fs.remove_tree(tmp_path / "never-there")


def test_read_link_reads_and_never_follows(lease, canary):
    os.symlink(canary[0], lease / "logs" / "link")
    assert lease_fs.read_link(lease, "logs/link") == str(canary[0])
    (lease / "logs" / "plain").write_text("x")
    assert "the link" in _refused(lambda: lease_fs.read_link(lease, "logs/plain")).reason
