"""One real platform for the whole run (Ray head, Serve app, actors, SQLite, 2 local agents), and the
create → usable → delete → released cycle of a buyer cluster that several figures read."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks import cluster_cycle, common, pg_server
from cli.platform import launcher as platform_launcher
from worker import procs


class Api:
    """A signed-in HTTP session against the platform."""

    def __init__(self, base_url: str, token: str | None = None):
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.token = token
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def __getattr__(self, name):
        return getattr(self.http, name)

    def ok(self, method: str, path: str, expect: tuple[int, ...] = (200, 201, 202), **kw) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code not in expect:
            raise RuntimeError(f"{method} {path} → {r.status_code}: {r.text[:300]}")
        return r.json()


@dataclasses.dataclass(frozen=True)
class PlatformLayout:
    """Where the platform keeps its state and on how many nodes it runs: SQLite on one node (`dcluster up`, the
    default), or PostgreSQL on one node or several (head + `--join`, one API replica each)."""

    database: str = "sqlite"  # "sqlite" | "postgresql" (a server this session starts and removes)
    nodes: int = 1

    DATABASES = ("sqlite", "postgresql")

    def __post_init__(self):
        if self.database not in self.DATABASES:
            raise ValueError(f"database {self.database!r}: one of {', '.join(self.DATABASES)}")
        if self.nodes < 1:
            raise ValueError(f"platform nodes {self.nodes}: at least 1")
        if self.nodes > 1 and self.database == "sqlite":
            raise ValueError("a platform on several nodes needs PostgreSQL (the SQLite file lives on the head)")

    def __str__(self) -> str:
        return f"{self.database}, {self.nodes} node{'s' if self.nodes > 1 else ''}"


class PlatformSession:
    """The platform under test: started once, on free ports, in its own /tmp dir; stopped by `close()`."""

    def __init__(
        self,
        *,
        providers: int = 2,
        agent_cpus: int = 8,
        heartbeat_s: float = 5.0,
        idle_s: float = 10.0,
        agent_runtime: str | None = None,
        layout: PlatformLayout | None = None,
    ):
        self.layout = layout or PlatformLayout()
        self.pg: pg_server.PostgresServer | None = None  # the PostgreSQL server this session started
        self.member: platform_launcher.PlatformLauncher | None = None  # the second platform node (--join)
        self.providers = providers
        self.agent_runtime = agent_runtime  # None: the agents' default (docker, else bwrap)
        self.agent_cpus = agent_cpus
        self.heartbeat_s = heartbeat_s
        self.idle_s = idle_s
        self.root: Path | None = None
        self.launcher: platform_launcher.PlatformLauncher | None = None
        self.url = ""
        self.up_timings: dict[str, float] = {}
        self.idle_footprint: dict[str, Any] = {}
        self.lease_ids: set[str] = set()  # every node of every cluster we made: checked for leftovers
        self.cycles: list[dict] = []  # create → usable → delete → released, shared by several figures
        self._buyer: Api | None = None
        self._admin: Api | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> PlatformSession:
        # Short path: Ray's unix sockets live under <state>/ray and must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="dclb-", dir="/tmp"))
        port = procs.free_port()
        extra: dict[str, Any] = {}
        if self.layout.database == "postgresql":
            bin_dir = pg_server.find_bin_dir()
            if bin_dir is None:
                raise RuntimeError("--database postgresql needs PostgreSQL's initdb (apt-get install postgresql)")
            self.pg = pg_server.PostgresServer(bin_dir)
            self.pg.start()
            extra["settings"] = {"database": self.pg.create_database()}
        if self.layout.nodes > 1:
            extra["api_replicas"] = self.layout.nodes
        self.launcher = platform_launcher.PlatformLauncher(
            self.root / "s",
            port=port,
            providers=self.providers,
            agent_cpus=self.agent_cpus,
            heartbeat_s=self.heartbeat_s,
            agent_runtime=self.agent_runtime,
            **extra,
        )
        common.log(f"starting the platform in {self.root} (port {port}, {self.providers} agents, {self.layout})")
        result = self.launcher.up()
        self.url = result.api_url
        self.up_timings = result.timings_s
        if self.layout.nodes > 1:
            self._join_member(port)
        common.log(f"platform up in {result.timings_s.get('total')} s; idling {self.idle_s:.0f} s for the footprint")
        time.sleep(self.idle_s)
        self.idle_footprint = self.footprint()
        return self

    def _join_member(self, port: int) -> None:
        """A second platform node on this machine (`dcluster up --join`), as tests/integration/test_head_loss.py
        starts it: the operator copies the platform's Ray token and the secret key to it."""
        member_dir = self.root / "m"
        member_dir.mkdir(mode=0o700)
        for name in ("ray_auth_token", "secret.key"):
            shutil.copy2(self.state_dir / name, member_dir / name)
        self.member = platform_launcher.PlatformLauncher(
            member_dir, port=port, join=f"127.0.0.1:{self.record['ray_ports']['gcs']}"
        )
        t0 = time.monotonic()
        self.member.up()
        self.up_timings["member_join"] = round(time.monotonic() - t0, 1)

    def close(self) -> dict:
        """down(), then make sure nothing of ours is left (lease processes included), then remove the dir."""
        out: dict[str, Any] = {}
        if self.member is not None:
            try:
                out["member"] = self.member.down()
            except Exception as exc:  # still sweep below
                out["member"] = {"error": repr(exc)}
        if self.launcher is not None:
            common.log("stopping the platform")
            try:
                out = self.launcher.down()
            except Exception as exc:  # still sweep below
                out = {"error": repr(exc)}
        leftovers = 0
        tags = [cluster_cycle.LEASE_TAG_PREFIX + lid for lid in sorted(self.lease_ids)]
        if self.root is not None and (self.root / "s" / "platform.json").exists():
            record = json.loads((self.root / "s" / "platform.json").read_text())
            tags += [a["owner_tag"] for a in record.get("agents", [])] + [record["owner_tag"]]
        if self.root is not None and (self.root / "m" / "platform.json").exists():
            tags.append(json.loads((self.root / "m" / "platform.json").read_text())["owner_tag"])
        for tag in tags:
            summary = procs.stop_owned(tag, grace_s=3.0)
            leftovers += len(summary.terminated)
        out["leftover_processes_stopped"] = leftovers
        for lid in self.lease_ids:
            shutil.rmtree(f"/tmp/dcl-{lid}", ignore_errors=True)
        if self.pg is not None:
            self.pg.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        return out

    # --- accounts -----------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.root / "s"

    @property
    def record(self) -> dict:
        return json.loads((self.state_dir / "platform.json").read_text())

    def _login(self, username: str, password: str) -> Api:
        r = httpx.post(f"{self.url}/v1/token", data={"username": username, "password": password}, timeout=60)
        r.raise_for_status()
        return Api(self.url, r.json()["access_token"])

    @property
    def buyer(self) -> Api:
        if self._buyer is None:
            creds = json.loads((self.state_dir / "credentials.json").read_text())["accounts"]
            self._buyer = self._login("local-buyer", creds["local-buyer"]["password"])
        return self._buyer

    @property
    def admin(self) -> Api:
        if self._admin is None:
            creds = json.loads((self.state_dir / "admin_credentials.json").read_text())
            self._admin = self._login(creds["username"], creds["password"])
        return self._admin

    def new_account(self, role: str, username: str) -> Api:
        password = "bench-" + os.urandom(8).hex()
        r = httpx.post(
            f"{self.url}/v1/accounts", json={"username": username, "password": password, "role": role}, timeout=60
        )
        if r.status_code != 201:
            raise RuntimeError(f"could not create {role} {username}: {r.status_code} {r.text[:200]}")
        return self._login(username, password)

    def jwt_secret_path(self) -> Path:
        return self.state_dir / "jwt_secret"

    # --- processes ----------------------------------------------------------------------

    def platform_processes(self) -> list[psutil.Process]:
        """Every process of every platform node (PostgreSQL's server not included: `database_processes`)."""
        found = procs.owned_processes(self.record["owner_tag"])
        if self.member is not None:
            member = json.loads((self.member.state_dir / "platform.json").read_text())
            found += procs.owned_processes(member["owner_tag"])
        return found

    def database_processes(self) -> list[psutil.Process]:
        """PostgreSQL's postmaster and its backends (empty on SQLite, which runs inside the platform's processes)."""
        if self.pg is None:
            return []
        try:
            postmaster = psutil.Process(int((self.pg.data / "postmaster.pid").read_text().split()[0]))
            return [postmaster, *postmaster.children(recursive=True)]
        except (OSError, ValueError, psutil.Error):
            return []

    def agent_processes(self) -> list[psutil.Process]:
        return [p for a in self.record.get("agents", []) for p in procs.owned_processes(a["owner_tag"])]

    def footprint(self) -> dict[str, Any]:
        return {
            "platform": common.memory_of(self.platform_processes()),
            "agents": common.memory_of(self.agent_processes()),
        }

    # --- a buyer cluster's cycle --------------------------------------------------------

    def get_cluster(self, cid: str) -> dict:
        return self.buyer.ok("GET", f"/v1/clusters/{cid}")

    def events(self, cid: str) -> list[dict]:
        return self.buyer.ok("GET", f"/v1/clusters/{cid}/events")

    def create(self, num_workers: int, duration_s: int) -> dict:
        cluster = self.buyer.ok(
            "POST", "/v1/clusters", json={"num_workers": num_workers, "duration_s": duration_s}, expect=(202,)
        )
        self.lease_ids.update(n["id"] for n in cluster["nodes"])
        return cluster

    def wait_ended(self, cid: str, timeout_s: float = 180) -> dict:
        return common.wait_for(
            lambda: (c := self.get_cluster(cid))["status"] in cluster_cycle.ENDED and c,
            timeout_s=timeout_s,
            interval_s=0.5,
            what=f"cluster {cid} ended",
        )

    def run_cycle(self, *, num_workers: int = 2, footprint: bool = False, timeout_s: float = 240) -> dict:
        """One cluster's cycle (cluster_cycle.run), kept in `cycles` for the figures that read it."""
        out = cluster_cycle.run(self, num_workers=num_workers, footprint=footprint, timeout_s=timeout_s)
        self.cycles.append(out)
        return out
