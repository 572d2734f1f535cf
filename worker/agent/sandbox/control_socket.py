"""The unix socket a lease's supervisor listens on (supervisor.py, socket link): made by the agent in the lease's
private dir, so that only the agent's user can reach it and the sandbox cannot see it.

The dir is the agent's, mode 0700, outside every sandbox's view; the socket is 0600. The supervisor also
closes any connection whose peer is not the agent's uid (SO_PEERCRED). The path is reached through a
descriptor of the dir (/proc/self/fd/N/...): a state dir may be deeper than a socket path's 107 bytes.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

SOCKET_NAME = "supervisor.sock"


@contextlib.contextmanager
def _short_path(directory: Path) -> Iterator[str]:
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


def listen(directory: Path) -> socket.socket:
    """A listening socket at directory/supervisor.sock (0600; one left by an earlier sandbox is replaced).
    Inheritable: the caller passes it to the supervisor (pass_fds) and closes its own copy."""
    if os.stat(directory, follow_symlinks=False).st_mode & 0o077:
        raise PermissionError(f"{directory} is open to other users; the supervisor's socket goes in a 0700 dir")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(directory) as path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
        sock.listen(8)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(directory: Path, timeout_s: float = 10.0) -> socket.socket:
    """A connection to the supervisor listening in directory; OSError when none listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        with _short_path(directory) as path:
            sock.connect(path)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def remove(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / SOCKET_NAME)
