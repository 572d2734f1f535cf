"""What a lease ships to the platform as it closes: its Ray logs and its command logs, capped.

The files are the buyer's to write, and the agent reads them as root: every one is reached through
lease_fs (no symlink followed, no hard link read, only regular files), whatever a buyer's job has put
there; Ray's own `session_latest` link is read as a name, never followed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath

from worker.agent import lease_fs

logger = logging.getLogger(__name__)

NOT_SHIPPED = "[dcluster-agent] not shipped: "  # the text of a file the agent refused to read
SESSION_LINK = "session_latest"  # Ray's link to the node's current session dir, in its --temp-dir

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


def _session_logs(temp_dir: Path) -> PurePosixPath | None:
    """Ray's `session_latest/logs` beneath temp_dir, as a path of plain components: the link Ray makes
    (`<temp dir>/session_latest` -> `<temp dir>/session_<...>`) is read, never followed, and honoured
    only when it names a directory right beside it."""
    try:
        target = PurePosixPath(lease_fs.read_link(temp_dir.parent, PurePosixPath(temp_dir.name, SESSION_LINK)))
    except lease_fs.Refused:
        return None
    if target.is_absolute():
        if target.parent != PurePosixPath(temp_dir):
            return None
        target = PurePosixPath(target.name)
    if len(target.parts) != 1 or target.name in ("..", "."):
        return None
    return PurePosixPath(temp_dir.name, target.name, "logs")


def _candidates(anchor: Path, relative: PurePosixPath | None) -> list[tuple[Path, PurePosixPath]]:
    if relative is None:
        return []
    try:
        return [(anchor, relative / name) for name in lease_fs.names(anchor, relative)]
    except lease_fs.Refused:
        return []


def collect(
    temp_dir: Path,
    command_logs: Path,
    *,
    max_bytes: int = MAX_BYTES_PER_LEASE,
    max_file_bytes: int = MAX_BYTES_PER_FILE,
) -> list[dict]:
    """The lease's logs as [{name, text, bytes, truncated}], at most max_bytes of text in all.

    `temp_dir` is the lease's Ray --temp-dir (its `session_latest/logs`); `command_logs` holds the
    output of the commands the platform ran on the node (its `ray start`, for one).
    """
    ray_logs = _candidates(temp_dir.parent, _session_logs(temp_dir))
    command_files = _candidates(command_logs.parent, PurePosixPath(command_logs.name))
    candidates = [(f"ray/{rel.name}", anchor, rel) for anchor, rel in sorted(ray_logs, key=lambda c: _rank(c[1].name))]
    candidates += [(f"commands/{rel.name}", anchor, rel) for anchor, rel in command_files]
    shipped, left = [], max_bytes
    for name, anchor, relative in candidates:
        if left <= 0:
            break
        try:
            tail = lease_fs.read_tail(anchor, relative, min(max_file_bytes, left))
            text, size, truncated = tail.text, tail.size, tail.truncated
        except lease_fs.Refused as exc:  # said in its place, with none of its bytes
            logger.warning("a log of the lease was not shipped: %s", exc.strerror)
            text, size, truncated = f"{NOT_SHIPPED}{exc.reason}\n", 0, False
        if not text:
            continue
        cost = len(json.dumps(text))
        over = cost > left
        if over:  # escapes made it longer than what is left: keep a shorter tail, and it is the last
            text, truncated = text[len(text) - max(0, (left - 2) // 12) :], True  # at most 12 per character
            cost = len(json.dumps(text))
        if text:
            left -= cost
            shipped.append({"name": name, "text": text, "bytes": size, "truncated": truncated})
        if over:
            break
    return shipped
