"""dcl_core.secret_files: the one writer of owner-only files."""

import os
import stat

import pytest

from dcl_core import secret_files


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_secret_is_written_owner_only_and_replaced_whole(tmp_path):
    path = tmp_path / "dir" / "token"
    secret_files.write_secret_file(path, "first")
    secret_files.write_secret_file(path, b"second")
    assert path.read_text() == "second" and _mode(path) == 0o600
    assert os.listdir(path.parent) == ["token"]  # no temporary file left behind


def test_restrict_to_owner_narrows_a_file_and_never_follows_a_link(tmp_path):
    wide = tmp_path / "platform.db"
    wide.write_text("rows")
    wide.chmod(0o644)
    secret_files.restrict_to_owner(wide)
    assert _mode(wide) == 0o600
    other = tmp_path / "not-ours"
    other.write_text("x")
    other.chmod(0o644)
    os.symlink(other, tmp_path / "link")
    with pytest.raises(OSError):
        secret_files.restrict_to_owner(tmp_path / "link")
    assert _mode(other) == 0o644


def test_narrowing_a_live_sqlite_database_keeps_its_readers_locks(tmp_path):
    """A reader's snapshot holds a lock in the WAL index: a checkpoint in another process must stay busy after the
    files were narrowed (closing a descriptor of one's own on them would drop this process's POSIX locks)."""
    import contextlib
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "platform.db"
    # Closed however the test ends: an open reader would hold its lock into the next test's files.
    with (
        contextlib.closing(sqlite3.connect(db)) as writer,
        contextlib.closing(sqlite3.connect(db, isolation_level=None)) as reader,
    ):
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("CREATE TABLE t (x)")
        writer.commit()
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)  # the snapshot is held from here
        writer.execute("INSERT INTO t VALUES (1)")
        writer.commit()
        for name in ("platform.db", "platform.db-wal", "platform.db-shm"):
            secret_files.restrict_to_owner(tmp_path / name)
        checkpoint = (
            "import sqlite3, sys; "
            "print(sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])"
        )
        busy = subprocess.run([sys.executable, "-c", checkpoint, str(db)], capture_output=True, text=True, timeout=60)
        assert busy.stdout.strip() == "1", busy.stdout + busy.stderr  # the reader's snapshot still blocks it
        assert all(_mode(tmp_path / n) == 0o600 for n in ("platform.db", "platform.db-wal", "platform.db-shm"))
        reader.execute("COMMIT")
