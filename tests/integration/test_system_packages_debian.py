"""`.ci/system-packages` on a fresh Debian: a minbase root filesystem made by debootstrap from this machine's apt
mirror, the script run in a chroot of it. As a user it refuses at once naming the apt-get command; as root it
installs bubblewrap, and a second run does nothing. Everything lives in the test's temp dir; every mount is made in
a mount namespace of its own (`unshare --mount`), so none outlives its command."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "system-packages"
NOBODY = "65534:65534"


def apt_mirror(sources: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The first Debian mirror and suite this machine's apt uses (deb822 .sources or one-line .list)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        text = path.read_text() if path.is_file() else ""
        if path.suffix == ".sources":
            uris, suites = re.search(r"^URIs:\s*(\S+)", text, re.M), re.search(r"^Suites:\s*(\S+)", text, re.M)
            if uris and suites and not suites[1].endswith(("-security", "-updates")):
                return uris[1], suites[1]
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                words = [p for p in parts[1:] if not p.startswith("[")]
                if not words[1].endswith(("-security", "-updates")):
                    return words[0], words[1]
    raise AssertionError(f"no Debian mirror in {[str(f) for f in files]}")


def _isolated(*command: str | Path, timeout: float) -> subprocess.CompletedProcess:
    """A command in a private mount namespace: what it mounts goes when it ends, even if it is killed."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--fork", *map(str, command)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _in_chroot(root: Path, *command: str, user: str | None = None) -> subprocess.CompletedProcess:
    as_user = [f"--userspec={user}"] if user else []
    chroot = shlex.join(["chroot", *as_user, str(root), *command])
    return _isolated("sh", "-c", f"mount -t proc proc {shlex.quote(str(root))}/proc && exec {chroot}", timeout=300)


@pytest.fixture(scope="module")
def debian(tmp_path_factory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root (CI runs as root)")
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is missing: run `.ci/system-packages test` as root (make test does)")
    mirror, suite = apt_mirror()
    root = tmp_path_factory.mktemp("debian") / "root"
    made = _isolated("debootstrap", "--variant=minbase", suite, root, mirror, timeout=400)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    shutil.copy(SCRIPT, root / "opt" / "system-packages")
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")  # apt in the chroot reaches the same mirror
    yield root
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert not [m for m in mounts if m.startswith(str(root))], "a mount outlived its namespace"
    shutil.rmtree(root.parent)


def test_the_mirror_is_read_from_either_apt_format(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert apt_mirror(tmp_path) == ("http://mirror.example/debian", "bookworm")
    (tmp_path / "sources.list").write_text("# a comment\ndeb [arch=amd64] http://other.example/debian trixie main\n")
    assert apt_mirror(tmp_path) == ("http://other.example/debian", "trixie")
    assert apt_mirror() == apt_mirror()  # this machine's files parse


def _bwrap_installed(root: Path) -> bool:
    status = _in_chroot(root, "dpkg-query", "-W", "-f", "${Status}", "bubblewrap")
    return status.stdout == "install ok installed"


def test_on_a_fresh_debian_a_user_is_refused_then_root_installs_then_nothing_is_left_to_do(debian):
    assert not _bwrap_installed(debian)

    refused = _in_chroot(debian, "/bin/bash", "/opt/system-packages", "demo", user=NOBODY)
    assert refused.returncode == 1, refused
    assert refused.stderr.strip() == (
        "make demo needs system packages that are missing; as root run: apt-get update && apt-get install -y bubblewrap"
    )
    assert not _bwrap_installed(debian)

    installed = _in_chroot(debian, "/bin/bash", "/opt/system-packages", "demo")
    assert installed.returncode == 0, installed.stderr
    assert "installing system packages: bubblewrap" in installed.stderr
    assert _bwrap_installed(debian)
    version = _in_chroot(debian, "bwrap", "--version")
    assert version.returncode == 0 and version.stdout.startswith("bubblewrap "), version
    assert not (debian / "usr/sbin/policy-rc.d").exists()  # the script's own, removed on its way out

    dpkg_log = (debian / "var/log/dpkg.log").read_text()
    again = _in_chroot(debian, "/bin/bash", "/opt/system-packages", "demo")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert (debian / "var/log/dpkg.log").read_text() == dpkg_log  # apt-get was not run

    # A user on the now complete system: nothing missing, nothing asked.
    as_user = _in_chroot(debian, "/bin/bash", "/opt/system-packages", "demo", user=NOBODY)
    assert (as_user.returncode, as_user.stderr) == (0, "")
