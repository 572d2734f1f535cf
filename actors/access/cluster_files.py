"""What the ClusterManager keeps on disk: each buyer cluster's Ray auth token, and the launcher's leftovers."""

from __future__ import annotations

import time
from pathlib import Path

from dcl_core import secret_files

TOKEN_FILE = secret_files.RAY_AUTH_TOKEN_FILE
LAUNCHER_TMP = "launcher-tmp"  # under the state dir: the launcher's private temp dir


def write_cluster_token(cluster_dir: Path, token: str) -> None:
    """The sub-cluster's Ray auth token, owner-only on disk; given to its buyer and its agents only."""
    secret_files.ensure_private_dir(cluster_dir)
    secret_files.write_secret_file(cluster_dir / TOKEN_FILE, token)


def read_cluster_token(cluster_dir: Path) -> str:
    return (cluster_dir / TOKEN_FILE).read_text().strip()


def remove_stale_launcher_files(directory: Path, *, older_than_s: float) -> int:
    """Deletes the launcher's leftovers (config caches it writes even with no_config_cache) older than
    older_than_s from its private temp dir; returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed, cutoff = 0, time.time() - older_than_s
    for path in directory.glob("ray-config-*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            pass
    return removed
