"""The buyer CLI end to end: `dcluster login/cluster ...` as subprocesses against the real platform."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import Api

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DCLUSTER = str(BIN / "dcluster")


class Cli:
    """Runs `dcluster` with its own config dir and HOME, and none of the caller's RAY_* variables."""

    def __init__(self, tmp_path: Path):
        self.config_dir = tmp_path / "config"
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DCLUSTER_"))}
        self.env.update(
            {
                "DCLUSTER_CONFIG_DIR": str(self.config_dir),
                "HOME": str(self.home),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )

    def __call__(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DCLUSTER, *args], env=self.env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )

    def json(self, *args: str, code: int = 0) -> dict | list:
        r = self(*args, "--json")
        assert r.returncode == code, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        return json.loads(r.stdout)


def test_buyer_cli_end_to_end(market, platform, tmp_path):
    buyer = Api.sign_up(platform.url, "buyer")
    cli = Cli(tmp_path)

    r = cli("cluster", "list")
    assert r.returncode == 3 and "dcluster login" in r.stderr

    password_file = tmp_path / "password"
    password_file.write_text(buyer.password + "\n")
    r = cli("login", "--url", platform.url, "--username", buyer.username, "--password-file", str(password_file))
    assert r.returncode == 0, r.stderr
    session = cli.config_dir / "session.json"
    assert stat.S_IMODE(session.stat().st_mode) == 0o600 and stat.S_IMODE(cli.config_dir.stat().st_mode) == 0o700
    token = json.loads(session.read_text())["token"]
    assert token not in r.stdout + r.stderr and buyer.password not in r.stdout + r.stderr

    # 8 CPUs in all: 64 workers cannot fit; nothing is left behind.
    err = cli.json("cluster", "create", "--workers", "64", code=5)
    assert err["status_code"] == 409 and "not enough capacity" in err["error"]
    assert cli("cluster", "status", "c-000000000000").returncode == 4

    r = cli("cluster", "create", "--workers", "1", "--duration", "10m", "--name", "cli-e2e", "--wait", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    cluster = json.loads(r.stdout)
    cid = cluster["id"]
    try:
        assert cluster["status"] == "running" and cluster["workers_joined"] == 1
        assert cluster["expires_at"] - cluster["created_at"] == pytest.approx(600, abs=1)
        assert cluster["connection"]["env"]["RAY_AUTH_MODE"] == "token"
        assert "running" in r.stderr  # the events, as progress on stderr
        assert token not in r.stdout + r.stderr

        listed = cli.json("cluster", "list")
        assert [(c["id"], c["status"]) for c in listed] == [(cid, "running")]
        r = cli("cluster", "list")
        assert r.returncode == 0 and cid in r.stdout and "cli-e2e" in r.stdout and "1/1" in r.stdout

        # The stock Ray CLI with nothing but what `connect` prints.
        r = cli("cluster", "connect", cid)
        assert r.returncode == 0, r.stderr
        assert [shlex.split(line)[0] for line in r.stdout.splitlines()] == ["export"] * 3
        script = (
            f'eval "$({shlex.quote(DCLUSTER)} cluster connect {cid})" && ray job submit -- python -c "print(6 * 7)"'
        )
        job = subprocess.run(["bash", "-c", script], env=cli.env, capture_output=True, text=True, timeout=300)
        assert job.returncode == 0, job.stdout + job.stderr
        assert "42" in job.stdout

        extended = cli("cluster", "extend", cid, "--duration", "5m", "--json")
        if extended.returncode == 0:
            assert json.loads(extended.stdout)["expires_at"] == pytest.approx(cluster["expires_at"] + 300, abs=1)
        else:  # a platform without the extend endpoint yet
            assert extended.returncode == 1 and "cannot extend" in extended.stderr, extended.stderr
    finally:
        r = cli("cluster", "delete", cid, "--wait", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["status"] == "terminated"
    kinds = [e["kind"] for e in cli.json("cluster", "events", cid)]
    assert "running" in kinds and kinds[-1] == "terminated"
    assert cli("cluster", "connect", cid).returncode == 5  # ended: no connection

    assert cli("logout").returncode == 0 and not session.exists()
    assert cli("cluster", "list").returncode == 3
