"""The agent's only way to touch a path a lease can write: no link followed, no swap raced, regular files only.

The agent is root beside a tenant's files. Whatever a lease's uid can write (its home, its logs, its Ray
temp dir) may be a symlink, a hard link, a FIFO, or swapped for one between a check and a use. So,
for every such path:

- it is reached from an *anchor* the lease cannot change (the agent's own lease dir, /tmp), one
  component at a time, each opened relative to the previous one with O_NOFOLLOW: a link anywhere on
  the way is refused (ELOOP/ENOTDIR), never followed, and a later swap cannot redirect what was opened;
- a file is first opened as O_PATH (which opens nothing: a FIFO cannot block, a device is not touched),
  checked through that descriptor to be a regular file with one link, and only then reopened for
  reading through it;
- the output of a command is read through the descriptor the agent made for it before the command ran
  (`create_log`): whatever the lease does to the name later, the agent reads the file it made;
- directories are removed with `shutil.rmtree(dir_fd=...)`, which never follows a link.

Anything refused raises `Refused`, whose text names the path and why; callers answer with it and carry
none of the file's bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

# Test-only: called as race_hook(stage, path) between the steps where a lease could swap a path
# ("walked" after each directory is opened, "opening" before the last component is). Never set in the product.
race_hook: Callable[[str, str], None] | None = None


class Refused(OSError):
    """A lease path the agent will not read or touch; the text names the path and the reason."""

    def __init__(self, path: str | Path, reason: str, err: int = errno.EPERM):
        super().__init__(err, f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Tail:
    """The last bytes of a file, decoded; `size` is the file's size, `truncated` whether more came before."""

    text: str
    size: int
    truncated: bool


def _hook(stage: str, path: str | Path) -> None:
    if race_hook is not None:
        race_hook(stage, str(path))


def _parts(relative: str | PurePosixPath) -> list[str]:
    parts = [p for p in PurePosixPath(relative).parts if p not in ("", ".")]
    if PurePosixPath(relative).is_absolute() or ".." in parts:
        raise Refused(relative, "not a path beneath the lease's directory")
    return parts


def _why(exc: OSError, what: str, dir_fd: int | None = None, name: str = "") -> str:
    """The reason an open beneath a lease's dir failed; the entry itself is looked at (never followed) to name it."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and dir_fd is not None:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        if stat.S_ISLNK(mode):
            return f"{what} is a symbolic link: not followed"
        if mode:
            return f"{what} is not a directory ({_kind(mode)}): not followed"
    if exc.errno == errno.ENOENT:
        return f"{what} does not exist"
    return f"{what}: {os.strerror(exc.errno or 0)}"


def open_dir(anchor: Path, relative: str | PurePosixPath = "") -> int:
    """A descriptor of anchor/relative. The anchor is the agent's own and trusted; every component of
    `relative` is opened beneath the one before without following a link. The caller closes it."""
    try:
        fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(anchor, _why(exc, "the directory"), exc.errno or errno.EPERM) from None
    walked = Path(anchor)
    try:
        for part in _parts(relative):
            walked = walked / part
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise Refused(walked, _why(exc, "a directory on the way", fd, part), exc.errno or errno.EPERM) from None
            os.close(fd)
            fd = child
            _hook("walked", walked)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split(relative: str | PurePosixPath) -> tuple[str, str]:
    parts = _parts(relative)
    if not parts:
        raise Refused(relative, "names no file")
    return "/".join(parts[:-1]), parts[-1]


def open_regular(anchor: Path, relative: str | PurePosixPath) -> int:
    """A read-only descriptor of the regular file anchor/relative, which has one link; refused otherwise."""
    parent, name = _split(relative)
    where = Path(anchor) / relative
    dir_fd = open_dir(anchor, parent)
    try:
        _hook("opening", where)
        try:
            path_fd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise Refused(where, _why(exc, "the file", dir_fd, name), exc.errno or errno.EPERM) from None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(path_fd)
        if stat.S_ISLNK(info.st_mode):
            raise Refused(where, "a symbolic link: not followed", errno.ELOOP)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(where, f"not a regular file ({_kind(info.st_mode)}): not opened")
        if info.st_nlink != 1:
            raise Refused(where, f"a file with {info.st_nlink} hard links: not read")
        # Reopening through our own O_PATH descriptor opens exactly the inode checked above.
        return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(path_fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a file"


def tail_of(fd: int, limit: int) -> Tail:
    """The last `limit` bytes of an open regular file (its size as it is now)."""
    size = os.fstat(fd).st_size
    start = max(0, size - limit)
    data = os.pread(fd, limit, start)
    return Tail(data.decode("utf-8", errors="replace"), size, start > 0)


def read_tail(anchor: Path, relative: str | PurePosixPath, limit: int) -> Tail:
    """The tail of a lease's file, opened as open_regular() opens it; raises Refused."""
    fd = open_regular(anchor, relative)
    try:
        return tail_of(fd, limit)
    finally:
        os.close(fd)


def names(anchor: Path, relative: str | PurePosixPath = "") -> list[str]:
    """Names in a lease's directory other than directories (links, FIFOs and the like included: whoever
    reads them through read_tail is told why they are refused)."""
    fd = open_dir(anchor, relative)
    try:
        with os.scandir(fd) as entries:
            return sorted(e.name for e in entries if not e.is_dir(follow_symlinks=False))
    finally:
        os.close(fd)


def read_link(anchor: Path, relative: str | PurePosixPath) -> str:
    """What a symbolic link in a lease's directory says (read, never followed)."""
    parent, name = _split(relative)
    fd = open_dir(anchor, parent)
    try:
        return os.readlink(name, dir_fd=fd)
    except OSError as exc:
        raise Refused(Path(anchor) / relative, _why(exc, "the link"), exc.errno or errno.EPERM) from None
    finally:
        os.close(fd)


def create_log(anchor: Path, relative_dir: str | PurePosixPath, name: str, uid: int | None, gid: int | None) -> int:
    """A new empty file the lease's user may write (a command's output), made by the agent; returns the
    agent's read descriptor of it, which is what the agent reads afterwards whatever the lease does to the
    name. Whatever the lease had put at that name is removed first (a link is removed, not followed)."""
    dir_fd = open_dir(anchor, relative_dir)
    flags = os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            try:
                os.unlink(name, dir_fd=dir_fd)
                fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
            except OSError as exc:
                raise Refused(
                    Path(anchor) / relative_dir / name,
                    f"cannot make the command's log: {os.strerror(exc.errno or 0)}",
                    exc.errno or errno.EPERM,
                ) from None
    finally:
        os.close(dir_fd)
    try:
        _hand_over(fd, uid, gid, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(fd: int, anchor: Path, relative: str | PurePosixPath) -> bool:
    """Whether the name still stands for the file open as fd (looked at without following a link)."""
    parent, name = _split(relative)
    try:
        dir_fd = open_dir(anchor, parent)
    except Refused:
        return False
    try:
        there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    finally:
        os.close(dir_fd)
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def _hand_over(fd: int, uid: int | None, gid: int | None, mode: int) -> None:
    """The open file or dir to the lease's user (none: it stays the agent's) with `mode`."""
    if uid is not None:
        os.fchown(fd, uid, gid if gid is not None else uid)
    os.fchmod(fd, mode)


def _open_child(anchor: Path, name: str, flags: int, what: str, *, mkdir: bool = False) -> int:
    """A descriptor of anchor/name (one component, never followed); mkdir: made first as a 0700 dir if missing."""
    _split(name)
    anchor_fd = open_dir(anchor)
    try:
        if mkdir:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=anchor_fd)
        try:
            return os.open(name, flags, dir_fd=anchor_fd)
        except OSError as exc:
            raise Refused(Path(anchor) / name, _why(exc, what, anchor_fd, name), exc.errno or errno.EPERM) from None
    finally:
        os.close(anchor_fd)


def make_dir(
    anchor: Path, name: str, *, uid: int | None, gid: int | None, mode: int, owners: tuple[int, ...] = ()
) -> None:
    """Make anchor/name (one component) a directory of the lease's user with `mode`. An existing one is
    accepted only as a real directory owned by the agent or by one of `owners`; it is changed through a
    descriptor, never through the name."""
    fd = _open_child(anchor, name, _DIR_FLAGS, "the directory", mkdir=True)
    try:
        info = os.fstat(fd)
        if info.st_uid not in (os.geteuid(), *owners, *((uid,) if uid is not None else ())):
            raise Refused(Path(anchor) / name, f"exists and belongs to uid {info.st_uid}; remove it and retry")
        _hand_over(fd, uid, gid, mode)
    finally:
        os.close(fd)


def give(anchor: Path, name: str, *, uid: int | None, gid: int | None, mode: int) -> None:
    """Hand the agent-made anchor/name (one component, a file or dir) to the lease's user, through a descriptor."""
    fd = _open_child(anchor, name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, "the path")
    try:
        _hand_over(fd, uid, gid, mode)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove path (a lease's dir, or a link in its place) and everything beneath it without following a link.

    Its parent is the agent's own (the leases dir, /tmp): the lease cannot swap the name itself."""
    path = Path(path)
    try:
        parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            info = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path.name, ignore_errors=True, dir_fd=parent_fd)
        else:
            os.unlink(path.name, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)
