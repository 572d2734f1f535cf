"""Two `dcluster up` at once on a busy machine: on two state dirs (both come up), and on the same state
dir (one comes up, the other refuses clearly or finds it running). Never a wedge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cli.platform import launcher as platform_launcher
from tests.integration.faults import faultkit
from tests.integration.helpers import Api
from worker import procs

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DCLUSTER = str(Path(sys.executable).parent / "dcluster")
UP_TIMEOUT_S = 420  # generous: three starts at once, with CPU burners, on a shared 2-core machine


def dcluster_up(state_dir: Path, port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [DCLUSTER, "up", "--state-dir", str(state_dir), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )


def test_two_ups_at_once_on_a_busy_machine():
    root = Path(tempfile.mkdtemp(prefix="dcl-two-", dir="/tmp"))
    dirs = [root / "a", root / "b"]
    ports = procs.free_ports(2)
    started = time.time()
    try:
        with faultkit.cpu_burners(2):
            ups = [
                dcluster_up(dirs[0], ports[0], root / "up-a.log"),
                dcluster_up(dirs[1], ports[1], root / "up-b.log"),
                dcluster_up(dirs[0], ports[0], root / "up-a2.log"),
            ]  # the same state dir as the first
            codes = [p.wait(timeout=UP_TIMEOUT_S) for p in ups]
        took = time.time() - started
        logs = [(root / f"up-{n}.log").read_text() for n in ("a", "b", "a2")]
        print(
            f"\nthree `dcluster up` at once with 2 CPU burners: exit codes {codes} in {took:.0f} s\n"
            + "\n".join(
                f"--- {n}: {log.strip().splitlines()[-1] if log.strip() else ''}"
                for n, log in zip(("a", "b", "a2"), logs, strict=True)
            )
        )
        assert codes[1] == 0, logs[1]
        # Of the two `up` on one state dir, one brought it up; the other found it running or refused, naming why.
        same = [(codes[0], logs[0]), (codes[2], logs[2])]
        assert any(code == 0 for code, _ in same), "\n".join(log for _, log in same)
        for code, log in same:
            assert code == 0 or "another dcluster up/down is running" in log, log
        for state_dir, port in zip(dirs, ports, strict=True):
            url = f"http://127.0.0.1:{port}"
            assert httpx.get(url + "/healthz", timeout=30).status_code == 200
            creds = json.loads((state_dir / "admin_credentials.json").read_text())
            r = Api(url).post("/v1/token", data=creds)
            assert r.status_code == 200, r.text  # the bootstrap admin exists
        # One platform per state dir: the refused (or converged) `up` started nothing of its own.
        record = json.loads((dirs[0] / "platform.json").read_text())
        assert record["status"] == "running" and record["port"] == ports[0]
    finally:
        for state_dir in dirs:
            if (state_dir / "platform.json").exists():
                platform_launcher.PlatformLauncher(state_dir).down()
        shutil.rmtree(root, ignore_errors=True)
