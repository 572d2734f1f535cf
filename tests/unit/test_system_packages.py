"""`.ci/system-packages`, which `make demo` and `make test` run first: on a machine that lacks what they need and
cannot install it (no apt-get, or not root), it stops at once naming the command to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "system-packages"


def _bare_path(tmp_path: Path) -> str:
    """A PATH with the shell tools the script uses and none of the packages (nor apt-get)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "ls", "printf", "chmod", "rm"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@pytest.mark.parametrize(
    ("target", "packages"),
    [
        ("demo", "bubblewrap util-linux"),
        (
            "test",
            "bubblewrap util-linux chromium chromium-driver docker.io postgresql prometheus redis-server debootstrap",
        ),
    ],
)
def test_missing_packages_stop_at_once_naming_the_command(tmp_path, target, packages):
    if list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        packages = packages.replace(" postgresql", "")  # found where Debian keeps it, off PATH
    if Path("/usr/sbin/debootstrap").exists():
        packages = packages.replace(" debootstrap", "")  # likewise, off a user's PATH
    env = {"PATH": _bare_path(tmp_path), "HOME": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run(
        [env["PATH"] + "/bash", str(SCRIPT), target], env=env, capture_output=True, text=True, timeout=30
    )
    took_s = time.monotonic() - started
    assert done.returncode == 1, done
    assert done.stderr.strip() == (
        f"make {target} needs system packages that are missing; as root run: "
        f"apt-get update && apt-get install -y {packages}"
    )
    assert took_s < 1.0 or os.environ.get("CI"), took_s


def test_nothing_to_do_where_everything_is_there(tmp_path):
    """Where the packages are present (this machine runs the suite), the step is a no-op."""
    if not (shutil.which("bwrap") and shutil.which("setpriv")):
        pytest.skip("bubblewrap or setpriv missing here")
    done = subprocess.run(["bash", str(SCRIPT), "demo"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done
