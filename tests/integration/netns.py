"""Network namespaces for tests: a "site" joined to the host by a veth pair on a /30 of its own, commands run in it,
and a teardown that is safe to call twice or after a setup that failed half-way.

A site has no route out: the namespace knows only its /30 (no default route) and the host forwards nothing, so
what runs there reaches the host's address on the pair and nothing else. Needs root and iproute2 (`ip`).
Addresses come from 10.213.0.0/16 (private, never one of the documentation ranges routed on the test machines),
a /30 no interface of the host already uses, picked under a file lock so that parallel tests never share one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

POOL = ipaddress.ip_network("10.213.0.0/16")
_LOCK = Path("/tmp/dcl-netns.lock")


def available() -> str | None:
    """Why sites cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "no `ip netns` (iproute2)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network of the host's interfaces and routes."""
    used = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        fields = line.split()
        used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show").stdout.splitlines():
        target = line.split()[0]
        if target != "default":
            used.append(ipaddress.ip_network(target, strict=False))
    return used


def _free_slash30(rng: random.Random) -> ipaddress.IPv4Network:
    used = _networks_in_use()
    for _ in range(1000):
        index = rng.randrange(POOL.num_addresses // 4)
        candidate = ipaddress.ip_network(f"{POOL.network_address + 4 * index}/30")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError(f"no free /30 left in {POOL}")


@dataclasses.dataclass
class Site:
    """One namespace and its veth pair; the host end holds host_ip, the namespace's end site_ip."""

    name: str
    host_if: str
    site_if: str
    network: ipaddress.IPv4Network

    @property
    def host_ip(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def site_ip(self) -> str:
        return str(self.network.network_address + 2)

    def argv(self, args: Sequence[str | os.PathLike]) -> list[str]:
        """A command line that runs args inside the namespace (`ip netns exec` execs it: same PID)."""
        return ["ip", "netns", "exec", self.name, *map(str, args)]

    def run(
        self, args: Sequence[str | os.PathLike], *, env: dict[str, str], timeout_s: float = 300, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(args),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )

    def pids(self) -> list[int]:
        done = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []

    def teardown(self, grace_s: float = 10.0) -> None:
        """Whatever still runs in the namespace (all of it started there by the test) is stopped by PID, then the
        pair and the namespace go. Safe to call again, or on a site made half-way."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        _ip("link", "del", self.host_if, check=False)  # deletes both ends
        _ip("netns", "del", self.name, check=False)


def create(label: str) -> Site:
    """A new site: namespace `dcl-<label>-<hex>`, veth `dcl<hex>h` (host) / `dcl<hex>s`, loopback up."""
    token = uuid.uuid4().hex[:8]
    site = Site(f"dcl-{label}-{token}", f"dcl{token}h", f"dcl{token}s", POOL)  # network set below
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            site.network = _free_slash30(random.Random(token))
            _ip("netns", "add", site.name)
            _ip("link", "add", site.host_if, "type", "veth", "peer", "name", site.site_if)
            _ip("link", "set", site.site_if, "netns", site.name)
            _ip("addr", "add", f"{site.host_ip}/30", "dev", site.host_if)
            _ip("link", "set", site.host_if, "up")
            inside = ("netns", "exec", site.name, "ip")
            _ip(*inside, "addr", "add", f"{site.site_ip}/30", "dev", site.site_if)
            _ip(*inside, "link", "set", site.site_if, "up")
            _ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            site.teardown()
            raise
    return site


@contextlib.contextmanager
def site(label: str) -> Iterator[Site]:
    """A site for the block; torn down after it, whatever happens."""
    made = create(label)
    try:
        yield made
    finally:
        made.teardown()
