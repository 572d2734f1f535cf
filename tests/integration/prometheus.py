"""A real Prometheus server (Debian's `prometheus`) for the suites: a free port, a directory of its own, stopped by
its owner tag; scrape jobs as the README tells operators to write them."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.waiting import wait_for
from worker import procs

SCRAPE_INTERVAL_S = 2  # short, so that a test sees several scrapes in seconds


class PrometheusServer:
    def __init__(self, root: Path, scrape_configs: list[dict]):
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            pytest.fail("this test needs Debian's prometheus (apt-get install -y prometheus; .ci/run installs it)")
        self.root = root
        self.scrape_configs = scrape_configs
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tag = f"dcl-test-prometheus-{uuid.uuid4().hex[:8]}"
        self.log = root / "prometheus.log"

    def __enter__(self) -> PrometheusServer:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        # YAML is a superset of JSON: the config is written as JSON.
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                        "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                    },
                    "scrape_configs": self.scrape_configs,
                },
                indent=2,
            )
        )
        cmd = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        procs.spawn(cmd, env=dict(os.environ), log_path=self.log, owner_tag=self.tag)
        self.started_at = time.time()
        try:
            wait_for(lambda: self._ready(), timeout_s=60, interval_s=0.5, what=f"prometheus ready on {self.url}")
        except AssertionError:
            self.__exit__()
            raise AssertionError(f"prometheus did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc) -> None:
        procs.stop_owned(self.tag, grace_s=5.0)

    def query(self, expr: str) -> list[dict]:
        """An instant query through Prometheus' HTTP API: its result vector."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]["result"]

    def targets(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def graph_url(self, expr: str) -> str:
        """Prometheus' own web UI (Debian ships the classic one) graphing expr since this server started."""
        range_s = max(60, int(time.time() - self.started_at) + 5)
        return str(
            httpx.URL(
                f"{self.url}/classic/graph",
                params={"g0.expr": expr, "g0.tab": "0", "g0.range_input": f"{range_s}s", "g0.stacked": "0"},
            )
        )
