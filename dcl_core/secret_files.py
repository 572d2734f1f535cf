"""The one writer of owner-only files (secrets, credentials, agent state) and owner-only dirs; stdlib only."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# The file a Ray auth token is kept in, 0600, wherever one is kept: the platform's state dir, each buyer
# cluster's dir on the platform, each lease's dir on a provider's machine.
RAY_AUTH_TOKEN_FILE = "ray_auth_token"


def ensure_private_dir(path: Path) -> Path:
    """path (and parents) exists; path itself is 0700 (mkdir's mode is masked by the umask, and ignored
    for an existing directory, hence the chmod)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_secret_file(path: Path, content: str | bytes) -> None:
    """Create or replace path atomically, mode 0600 from the first byte (never readable by others, not even
    for a moment; a crash never leaves half a file). The parent dir is created if missing (mode as umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(tmp, 0o600)  # a pre-set ACL or odd umask cannot widen it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def restrict_to_owner(path: Path) -> None:
    """Make an existing file of the caller's own dir owner-only (0600); a link in its place is refused, never
    followed. No descriptor is opened on it: closing one would drop SQLite's POSIX locks on a database file."""
    path = Path(path)
    if path.is_symlink():
        raise PermissionError(f"{path} is a symbolic link; remove it")
    os.chmod(path, 0o600)


# The key that encrypts the platform's secrets in a shared database (actors.db.secret_box): the key itself,
# or the path of a 0600 file holding it (a mounted secret). Every platform node's Ray processes need one.
SECRET_KEY_ENV = "DCL_SECRET_KEY"
SECRET_KEY_FILE_ENV = "DCL_SECRET_KEY_FILE"


def new_secret_key() -> str:
    """A fresh key in Fernet's format (32 random bytes, URL-safe base64)."""
    import base64

    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
