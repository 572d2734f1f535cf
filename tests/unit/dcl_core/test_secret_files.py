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
