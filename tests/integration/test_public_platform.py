"""A platform at a public https URL with a certificate authority of its own, started with `dcluster up
--public-url`: the CLI signs in with the pinned fingerprint, a local agent enrolls through the public URL, a
buyer cluster's node provider reaches the API over TLS with the CA from its provider config; a wrong pin, plain
HTTP and another certificate are refused."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from pathlib import Path

import httpx
import pytest

import dcluster
from dcluster import tls as client_tls
from tests.integration.helpers import Commands, LocalAgent, runtime_args, unique, wait_for
from worker import procs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def public_platform():
    root = Path(tempfile.mkdtemp(prefix="dcl-tls-", dir="/tmp"))
    state_dir = root / "state"
    run = Commands(root, state_dir)
    port = procs.free_port()
    url = f"https://127.0.0.1:{port}"
    runtime = runtime_args()[1]
    try:
        up = run(
            "up", "--port", str(port), "--public-url", url, "--providers", "1", "--heartbeat-s", "2",
            "--agent-runtime", runtime, "--agent-cpus", "4",
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        yield run, url, up.stdout
    finally:
        down = run("down")
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr


def _admin(run: Commands, url: str, trust: dcluster.Trust) -> dcluster.Client:
    creds = json.loads((run.state_dir / "admin_credentials.json").read_text())
    client = dcluster.Client(url, trust=trust, timeout_s=30)
    client.login(creds["username"], creds["password"])
    return client


def test_a_public_https_platform_pins_its_ca_everywhere(public_platform, tmp_path):
    run, url, up_out = public_platform
    tls_dir = run.state_dir / "tls"
    fingerprint = client_tls.fingerprint((tls_dir / "ca.pem").read_text())
    assert f"TLS CA fingerprint: {fingerprint}" in up_out and f"--fingerprint {fingerprint}" in up_out
    assert stat.S_IMODE((tls_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls_dir / "server.key").stat().st_mode) == 0o600

    st = json.loads(run("status", "--json").stdout)
    assert st["status"] == "running" and st["healthz"] and st["tls_fingerprint"] == fingerprint
    assert st["public_url"] == url and len(st["machines"]) == 1  # the local agent enrolled over TLS
    machine_json = run.state_dir.parent / "state-providers" / "1" / "machine.json"  # the agent's dir (not in state)
    assert json.loads(machine_json.read_text())["platform_ca"] == (tls_dir / "ca.pem").read_text()
    assert stat.S_IMODE(machine_json.stat().st_mode) == 0o600

    # Plain HTTP on the API's port gets no answer; the CLI refuses plain HTTP to another machine outright.
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=10)
    refused = run("login", "--url", "http://10.0.0.5:8000", "--username", "local-buyer")
    assert refused.returncode == 2 and "--insecure" in refused.stderr

    # A wrong pin is refused naming both fingerprints; the right one signs in and is kept with the session.
    password = json.loads((run.state_dir / "credentials.json").read_text())["accounts"]["local-buyer"]["password"]
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    wrong = "SHA256:" + "0" * 64
    bad = run("login", "--url", url, "--username", "local-buyer", "--password-file", str(password_file),
              "--fingerprint", wrong)  # fmt: skip
    assert bad.returncode == 1 and wrong in bad.stderr and fingerprint in bad.stderr
    ok = run("login", "--url", url, "--username", "local-buyer", "--password-file", str(password_file),
             "--fingerprint", fingerprint)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads((run.config_dir / "session.json").read_text())["ca_pem"] == (tls_dir / "ca.pem").read_text()

    # A cluster: its node provider (the launcher, the head's autoscaler) reaches the API at the public URL over
    # TLS with the CA the platform put in its provider config; the connection details name the public URL.
    created = run("cluster", "create", "--workers", "1", "--duration", "10m", "--wait", "--json", timeout_s=400)
    assert created.returncode == 0, created.stdout + created.stderr
    cluster = json.loads(created.stdout)
    try:
        assert cluster["status"] == "running"
        assert cluster["connection"]["dashboard_proxy_url"].startswith(f"{url}/v1/clusters/{cluster['id']}/")
    finally:
        deleted = run("cluster", "delete", cluster["id"], "--wait", timeout_s=300)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr


def test_an_agent_with_a_wrong_pin_never_enrolls_and_the_right_one_does(public_platform, tmp_path):
    run, url, _ = public_platform
    trust = dcluster.Trust(ca_pem=(run.state_dir / "tls" / "ca.pem").read_text())
    fingerprint = trust.fingerprint
    assert fingerprint is not None
    with _admin(run, url, trust) as admin:
        username = unique("provider")
        admin.create_account(username, "password123", "provider")
        wrong = LocalAgent(url, username, "password123", tmp_path, extra_args=("--fingerprint", "SHA256:" + "1" * 64))
        wrong.start()
        try:
            assert wrong.proc.wait(timeout=60) == 1
        finally:
            wrong.stop(grace_s=3)
        assert "SHA256:" + "1" * 64 in wrong.log_text() and fingerprint in wrong.log_text()

        agent = LocalAgent(url, username, "password123", tmp_path, extra_args=("--fingerprint", fingerprint))
        agent.start()
        try:
            wait_for(
                lambda: [m for m in admin.list_machines() if m["provider"] == username and m["status"] == "online"],
                timeout_s=90,
                what="the pinned agent's machine online",
            )
        finally:
            agent.stop(grace_s=5)
