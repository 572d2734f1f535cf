"""What a lease ships to the platform as it closes: its Ray logs and its command logs, capped.

The files are the buyer's to write, and the agent reads them as root: so nothing is followed out
of the lease's own directories (no symlink, no hard link, only regular files), whatever Ray's
`session_latest` link or a buyer's job has put there.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

# What one lease ships at most, counted as JSON: its answer must stay under the API's 1 MiB body limit.
MAX_BYTES_PER_LEASE = 640 << 10
MAX_BYTES_PER_FILE = 160 << 10  # the tail of a longer file
# Job drivers first (what a buyer looks for after the end), then tasks' output, then Ray's own.
_PRIORITY = ("job-driver-", "worker-", "python-core-driver-", "raylet", "gcs_server", "dashboard", "monitor")


def _rank(name: str) -> tuple[int, str]:
    for i, prefix in enumerate(_PRIORITY):
        if name.startswith(prefix):
            return i, name
    return len(_PRIORITY), name


def _inside(path: Path, root: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except OSError:
        return False


def _read_tail(path: Path, limit: int) -> tuple[str, int, bool] | None:
    """(text, size on disk, truncated) of a plain file with one link; None for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return None
        start = max(0, info.st_size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        data = os.read(fd, limit)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace"), info.st_size, start > 0


def _files(directory: Path, root: Path) -> list[Path]:
    if not directory.exists() or not _inside(directory, root):
        return []
    try:
        return [Path(e.path) for e in os.scandir(os.path.realpath(directory)) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def collect(temp_dir: Path, command_logs: Path, *, max_bytes: int = MAX_BYTES_PER_LEASE,
            max_file_bytes: int = MAX_BYTES_PER_FILE) -> list[dict]:
    """The lease's logs as [{name, text, bytes, truncated}], at most max_bytes of text in all.

    `temp_dir` is the lease's Ray --temp-dir (its `session_latest/logs`); `command_logs` holds the
    output of the commands the platform ran on the node (its `ray start`, for one).
    """
    ray_logs = _files(temp_dir / "session_latest" / "logs", temp_dir)
    candidates = [(f"ray/{p.name}", p) for p in sorted(ray_logs, key=lambda p: _rank(p.name))]
    candidates += [(f"commands/{p.name}", p) for p in sorted(_files(command_logs, command_logs))]
    shipped, left = [], max_bytes
    for name, path in candidates:
        if left <= 0:
            break
        read = _read_tail(path, min(max_file_bytes, left))
        if read is None:
            continue
        text, size, truncated = read
        if not text:
            continue
        cost = len(json.dumps(text))
        over = cost > left
        if over:  # escapes made it longer than what is left: keep a shorter tail, and it is the last
            text, truncated = text[len(text) - max(0, (left - 2) // 12):], True  # at most 12 per character
            cost = len(json.dumps(text))
        if text:
            left -= cost
            shipped.append({"name": name, "text": text, "bytes": size, "truncated": truncated})
        if over:
            break
    return shipped
