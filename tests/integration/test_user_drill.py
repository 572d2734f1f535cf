"""The user-level drill: a provider's site on a network of its own installs from a wheelhouse, checks itself, enrolls
at the platform's public https URL and runs a buyer's cluster, as the README's provider quickstart and "A public
platform" say, with nothing of the checkout or of this test's virtualenv in reach.

The platform runs on the host (`dcluster up --host 0.0.0.0 --public-url https://<host's veth address>:PORT`, a
certificate authority of its own, no local providers). The site is a network namespace joined to the host by a
veth pair with no route out (tests/integration/netns.py): pip there has the wheelhouse, built on the host from the
package registry, and nothing else. In the site a virtualenv with `[agent]` runs `dcluster-agent --version` and
`doctor` and then the agent, enrolled with the fingerprint `dcluster status` prints; a buyer's virtualenv with the
base install (no Ray) signs in with that fingerprint, runs a 1-worker cluster whose nodes are leases on the site,
submits a Ray job to its head with the cluster's token from the agent's virtualenv (which has Ray), and deletes
the cluster. A wrong fingerprint and plain HTTP are refused."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dcluster
from dcluster import tls as client_tls
from tests.integration import netns
from tests.integration.helpers import Commands, runtime_args, unique, wait_for
from worker import procs

pytestmark = [pytest.mark.slow, pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))]

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
DISTRIBUTION = "decentralized-clusters"
PASSWORD = "drill-password-123"


def build_wheelhouse(out: Path) -> None:
    """The checkout's wheel and every wheel `[agent]` (hence the base install too) needs, at the locked versions,
    from the registry this machine's pip is configured with: the site has no other source."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "-c", CONSTRAINTS, "-w", out, f"{ROOT}[agent]"],
        capture_output=True,
        text=True,
        timeout=500,
        cwd=out,
    )
    assert done.returncode == 0, done.stderr[-4000:]


@dataclasses.dataclass
class Drill:
    site: netns.Site
    root: Path
    operator: Commands  # `dcluster` on the platform's host
    url: str
    agent_bin: Path
    buyer_bin: Path
    timings: dict[str, float]
    fingerprint: str = ""  # as providers and buyers get it: from the operator's `dcluster status`
    agent_tag: str = ""

    def env(self, name: str, bin_dir: Path) -> dict[str, str]:
        """A fresh user's environment in the site: a HOME of its own, the venv first, no pip configuration (the
        host's would point at indexes the site cannot reach), nothing of this process's."""
        home = self.root / f"home-{name}"
        home.mkdir(exist_ok=True)
        return {
            "HOME": str(home),
            "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def in_site(
        self, name: str, bin_dir: Path, *args: str | Path, timeout_s: float = 300
    ) -> subprocess.CompletedProcess:
        return self.site.run([str(a) for a in args], env=self.env(name, bin_dir), timeout_s=timeout_s, cwd=self.root)

    def agent(self, *args: str | Path, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return self.in_site("provider", self.agent_bin, self.agent_bin / "dcluster-agent", *args, timeout_s=timeout_s)

    def buyer(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return self.in_site("buyer", self.buyer_bin, self.buyer_bin / "dcluster", *args, timeout_s=timeout_s)

    def account(self, role: str) -> tuple[str, Path]:
        """A new account made through the public URL; its password in a 0600 file, as the README keeps it."""
        username = unique(role)
        trust = dcluster.Trust(ca_pem=client_tls.fetch_ca(self.url, expected=self.fingerprint))
        with dcluster.Client(self.url, trust=trust, timeout_s=60) as client:
            client.create_account(username, PASSWORD, role)
        password_file = self.root / f"{username}.pw"
        password_file.write_text(PASSWORD)
        password_file.chmod(0o600)
        return username, password_file

    def machine(self) -> dict:
        """This site's machine, online: its agent enrolled with the fingerprint (started once, for every test)."""
        if not self.agent_tag:
            username, password_file = self.account("provider")
            self.agent_tag = unique("dcl-drill-agent")
            cmd = [
                self.agent_bin / "dcluster-agent", "--platform-url", self.url, "--username", username,
                "--password-file", password_file, "--fingerprint", self.fingerprint,
                "--state-dir", self.root / "agent-state", "--name", self.agent_tag, "--cpus", "4",
                "--price-per-gpu-hour", "0.8", "--price-per-cpu-hour", "0.02", *runtime_args(),
            ]  # fmt: skip
            procs.spawn(
                self.site.argv(cmd),
                env=self.env("provider", self.agent_bin),
                log_path=self.root / "agent.log",
                owner_tag=self.agent_tag,
            )
        return wait_for(
            lambda: next(
                (m for m in self.status()["machines"] if m["name"] == self.agent_tag and m["status"] == "online"), None
            ),
            timeout_s=120,
            what=f"the site's machine online (agent log: {self.root / 'agent.log'})",
        )

    def status(self) -> dict:
        done = self.operator("status", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def stop_agent(self) -> None:
        if self.agent_tag:
            procs.stop_owned(self.agent_tag, grace_s=30)  # SIGTERM: the agent closes its leases and leaves


def _prepare(site: netns.Site, root: Path, operator: Commands, url: str) -> Drill:
    """The platform starts while the wheelhouse is built and the site's virtualenvs are made; then both installs."""
    timings: dict[str, float] = {}
    drill = Drill(site, root, operator, url, root / "agent-venv" / "bin", root / "buyer-venv" / "bin", timings)
    started = time.monotonic()

    def timed(name, fn, *args):
        begun = time.monotonic()
        result = fn(*args)
        timings[name] = time.monotonic() - begun
        return result

    def make_venv(role: str, bin_dir: Path, requirement: str) -> None:
        made = drill.in_site(role, Path("/usr/bin"), "python3", "-m", "venv", bin_dir.parent)
        assert made.returncode == 0, made.stderr
        wheelhouse_ready.result()
        installed = drill.in_site(
            role, bin_dir, bin_dir / "pip", "install", "--quiet", "--no-index", "--find-links", root / "wheelhouse",
            "-c", CONSTRAINTS, requirement, timeout_s=500,
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr[-4000:]

    (root / "wheelhouse").mkdir()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        up = pool.submit(
            timed, "platform up", operator,
            "up", "--host", "0.0.0.0", "--port", url.rsplit(":", 1)[1], "--public-url", url, "--heartbeat-s", "2",
        )  # fmt: skip
        wheelhouse_ready = pool.submit(timed, "wheelhouse", build_wheelhouse, root / "wheelhouse")
        venvs = [
            pool.submit(timed, "agent venv", make_venv, "provider", drill.agent_bin, f"{DISTRIBUTION}[agent]"),
            pool.submit(timed, "buyer venv", make_venv, "buyer", drill.buyer_bin, DISTRIBUTION),
        ]
        done = up.result()
        assert done.returncode == 0, done.stdout + done.stderr
        for venv in venvs:
            venv.result()
    drill.fingerprint = drill.status()["tls_fingerprint"]
    timings["setup"] = time.monotonic() - started
    return drill


@pytest.fixture(scope="module")
def drill() -> Iterator[Drill]:
    # Short: Ray's unix sockets live under the platform's temp dir (~107 bytes at most). 0755: the leases run as
    # users of their own, and their Python is the agent's virtualenv in here.
    root = Path(tempfile.mkdtemp(prefix="dcl-drill-", dir="/tmp"))
    root.chmod(0o755)
    operator = Commands(root, root / "state")
    with netns.site("drill") as site:
        url = f"https://{site.host_ip}:{procs.free_port()}"
        made: Drill | None = None
        try:
            made = _prepare(site, root, operator, url)
            yield made
        finally:
            if made is not None:
                made.stop_agent()
                print(f"drill timings (s): {json.dumps({k: round(v, 1) for k, v in made.timings.items()})}")
            site.teardown()
            down = operator("down")
            shutil.rmtree(root, ignore_errors=True)
            assert down.returncode == 0, down.stdout + down.stderr


def test_the_provider_installs_from_the_wheelhouse_checks_its_site_and_enrolls(drill):
    version = drill.agent("--version")
    assert version.returncode == 0 and version.stdout.startswith("dcluster-agent 0.1.0 (ray 2.60."), version
    assert drill.in_site("provider", drill.agent_bin, "python", "-c", "import fastapi").returncode != 0  # no platform

    # Before enrollment nothing is pinned: the platform's own CA is refused until the fingerprint is given.
    fingerprint = drill.fingerprint
    runtime = runtime_args()
    unpinned = drill.agent("doctor", "--platform-url", drill.url, "--state-dir", drill.root / "agent-state", *runtime)
    assert unpinned.returncode == 1 and f"FAIL  platform {drill.url}: " in unpinned.stdout, unpinned
    assert "--fingerprint" in unpinned.stdout
    doctor = drill.agent(
        "doctor", "--platform-url", drill.url, "--fingerprint", fingerprint,
        "--state-dir", drill.root / "agent-state", *runtime,
    )  # fmt: skip
    lines = doctor.stdout.splitlines()
    platform_line = next(line for line in lines if f"platform {drill.url}" in line)
    assert platform_line.startswith("ok") and "protocol" in platform_line, doctor.stdout
    assert next(line for line in lines if " clock: " in line).startswith("ok"), doctor.stdout
    failed = [line for line in lines if line.startswith("FAIL")]
    assert doctor.returncode == (1 if failed else 0) and lines[-1].startswith(f"{len(failed)} FAIL"), doctor.stdout

    machine = drill.machine()
    assert machine["status"] == "online"
    machine_json = json.loads((drill.root / "agent-state" / "machine.json").read_text())
    assert client_tls.fingerprint(machine_json["platform_ca"]) == fingerprint  # pinned at enrollment


def test_a_buyer_in_the_site_signs_in_with_the_pin_and_runs_a_cluster_there(drill):
    drill.machine()
    fingerprint = drill.fingerprint
    username, password_file = drill.account("buyer")
    login = ["login", "--username", username, "--password-file", str(password_file)]
    assert drill.in_site("buyer", drill.buyer_bin, "python", "-c", "import ray").returncode != 0  # the base install

    wrong = "SHA256:" + "0" * 64
    refused = drill.buyer(*login, "--url", drill.url, "--fingerprint", wrong)
    assert refused.returncode == 1 and wrong in refused.stderr and fingerprint in refused.stderr, refused
    plain = drill.url.replace("https://", "http://")
    clear = drill.buyer(*login, "--url", plain)
    assert clear.returncode == 2 and "--insecure" in clear.stderr, clear  # the CLI sends nothing in clear
    insecure = drill.buyer(*login, "--url", plain, "--insecure")
    assert insecure.returncode != 0, insecure  # and the platform answers no plain HTTP
    signed_in = drill.buyer(*login, "--url", drill.url, "--fingerprint", fingerprint)
    assert signed_in.returncode == 0, signed_in

    created = drill.buyer("cluster", "create", "--workers", "1", "--duration", "10m", "--wait", "--json", timeout_s=400)
    assert created.returncode == 0, created.stdout + created.stderr
    cluster = json.loads(created.stdout)
    try:
        assert cluster["status"] == "running"
        assert cluster["connection"]["dashboard_url"].startswith(f"http://{drill.site.site_ip}:")  # the site's
        connect = drill.buyer("cluster", "connect", cluster["id"])
        assert connect.returncode == 0, connect
        ray_env = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1)
            for line in connect.stdout.splitlines()
            if line.startswith("export ")
        )
        job = (
            "import ray; ray.init(); "
            "print('drill ran on', ray.get(ray.remote(num_cpus=1)(ray.util.get_node_ip_address).remote()))"
        )
        env = {**drill.env("buyer", drill.agent_bin), **ray_env}
        submitted = drill.site.run(
            [drill.agent_bin / "ray", "job", "submit", "--", "python", "-c", job], env=env, timeout_s=300
        )
        assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
        assert f"drill ran on {drill.site.site_ip}" in submitted.stdout and "succeeded" in submitted.stdout
    finally:
        deleted = drill.buyer("cluster", "delete", cluster["id"], "--wait", timeout_s=300)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
