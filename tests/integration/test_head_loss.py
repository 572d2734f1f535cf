"""The head-loss drill (issue 13 item 4): a two-node platform (two raylets, own ports and temp dirs) on PostgreSQL,
with GCS fault tolerance on Redis. kill -9 of every process of the head, then `dcluster up` again: the API answers,
nothing stored is lost, the agent carries on, a running buyer cluster still expires on time. Then kill -9 of the
node that holds the control-plane actors: they come back on the other node."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks import pg_server
from cli.platform import errors as platform_errors
from cli.platform import launcher as platform_launcher
from tests import redis_server
from tests.integration.conftest import HEARTBEAT_S, SETTINGS
from tests.integration.helpers import Api, LocalAgent, wait_for
from worker import procs

pytestmark = pytest.mark.slow

ACTORS = ("ProviderRegistryActor", "ClusterManagerActor", "ExpiryReaperActor")
CLUSTER_LIFETIME_S = 300  # long enough for provisioning, a head restart and a node loss on a busy 2-core machine


class Node:
    """One platform node: its launcher (state dir, owner tag) and what it runs."""

    def __init__(self, name: str, launcher: platform_launcher.PlatformLauncher):
        self.name, self.launcher = name, launcher

    @property
    def record(self) -> dict:
        return json.loads((self.launcher.state_dir / "platform.json").read_text())

    def processes(self):
        return procs.owned_processes(self.record["owner_tag"])

    def actors(self) -> set[str]:
        names = set()
        for p in self.processes():
            try:
                title = (p.cmdline() or [""])[0]
            except Exception:
                continue
            names |= {a for a in ACTORS if title.startswith(f"ray::{a}")}
        return names

    def kill_9(self) -> int:
        """SIGKILL to every process this node's launcher started (by PID, found by its owner tag)."""
        victims = self.processes()
        for p in victims:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not self.processes(), timeout_s=30, what=f"{self.name}'s processes gone")
        return len(victims)


@pytest.fixture
def two_nodes():
    bin_dir = pg_server.find_bin_dir()
    redis_bin = redis_server.RedisServer.find()
    if bin_dir is None or redis_bin is None:
        message = (
            "the head-loss drill needs PostgreSQL (initdb) and redis-server (apt-get install postgresql redis-server)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="dcl-hl-", dir="/tmp"))
    pg, redis = pg_server.PostgresServer(bin_dir), redis_server.RedisServer(redis_bin)
    nodes: list[Node] = []
    agents: list[LocalAgent] = []
    try:
        pg.start()
        redis.start()
        port = procs.free_port()
        head_kw = dict(
            port=port,
            heartbeat_s=HEARTBEAT_S,
            settings={**SETTINGS, "database": pg.create_database()},
            redis=redis.url,
            api_replicas=2,
        )
        head = Node("head", platform_launcher.PlatformLauncher(root / "head", **head_kw))
        nodes.append(head)
        head.launcher.up()
        # What an operator copies to the second machine: the platform cluster's Ray token and the secret key.
        member_dir = root / "member"
        member_dir.mkdir(mode=0o700)
        for name in ("ray_auth_token", "secret.key"):
            shutil.copy2(root / "head" / name, member_dir / name)
        member = Node(
            "member",
            platform_launcher.PlatformLauncher(
                member_dir, port=port, join=f"127.0.0.1:{head.record['ray_ports']['gcs']}"
            ),
        )
        nodes.append(member)
        member.launcher.up()

        def restart_head():
            try:
                platform_launcher.PlatformLauncher(root / "head", **head_kw).up()
            except platform_errors.PlatformError as exc:
                raise AssertionError(f"{exc}\n{exc.details or ''}") from None

        yield {
            "head": head,
            "member": member,
            "url": f"http://127.0.0.1:{port}",
            "root": root,
            "restart_head": restart_head,
            "agents": agents,
        }
    finally:
        for agent in agents:
            agent.stop(grace_s=5)
        for node in reversed(nodes):
            try:
                node.launcher.down()
            finally:
                procs.stop_owned(node.record["owner_tag"], grace_s=2)
        redis.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _admin(url: str, root: Path) -> Api:
    creds = json.loads((root / "head" / "admin_credentials.json").read_text())
    r = Api(url).post("/v1/token", data=creds)
    assert r.status_code == 200, r.text
    return Api(url, r.json()["access_token"])


def _healthy(url: str) -> bool:
    try:
        return Api(url).get("/healthz").status_code == 200
    except Exception:
        return False


def _ok(response) -> object:
    assert response.status_code == 200, f"{response.request.url}: {response.status_code} {response.text}"
    return response.json()


def _stored(admin: Api, buyer: Api, cid: str) -> dict:
    """What the database holds that the drill must not lose."""
    cluster = _ok(buyer.get(f"/v1/clusters/{cid}"))
    return {
        "accounts": sorted(a["username"] for a in _ok(admin.get("/v1/accounts"))),
        "machines": sorted(m["id"] for m in _ok(admin.get("/v1/machines"))),
        "cluster": {k: cluster[k] for k in ("id", "status", "expires_at", "created_at")},
        "connection": _ok(buyer.get(f"/v1/clusters/{cid}/connection")),
    }


def _stored_once_answering(url: str, root: Path, buyer: Api, cid: str, after: str) -> dict:
    """_stored, read once the API answers every request again: right after a node's loss Serve may still be
    replacing replicas (a moment with nothing listening is an outage, not a loss)."""
    admin = wait_for(lambda: _admin(url, root), timeout_s=120, interval_s=1, what=f"an admin sign-in after {after}")
    return wait_for(lambda: _stored(admin, buyer, cid), timeout_s=120, what=f"the stored data read back after {after}")


@pytest.mark.timeout(1200)
def test_head_loss_and_actor_node_loss(two_nodes):
    head, member, url, root = two_nodes["head"], two_nodes["member"], two_nodes["url"], two_nodes["root"]
    provider = Api.sign_up(url, "provider")
    agent = LocalAgent(url, provider.username, provider.password, root, extra_args=("--cpus", "4")).start()
    two_nodes["agents"].append(agent)
    machine = wait_for(
        lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
        timeout_s=90,
        what="the provider's machine online",
    )[0]
    buyer = Api.sign_up(url, "buyer")
    # The cheapest real buyer cluster: its head on the provider's machine (a worker joins the same way).
    r = buyer.post("/v1/clusters", json={"num_workers": 1, "cpus_per_worker": 1, "duration_s": CLUSTER_LIFETIME_S})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    wait_for(
        lambda: buyer.get(f"/v1/clusters/{cid}").json()["status"] == "running",
        timeout_s=240,
        interval_s=1,
        what="the buyer cluster running",
    )
    admin = _admin(url, root)
    before = _stored(admin, buyer, cid)
    agent_pid = agent.proc.pid

    # 1. The head is lost: every process of it, kill -9 (the actors were made on it, before the member joined).
    assert head.actors() == set(ACTORS)
    killed_at = time.time()
    assert head.kill_9() > 0
    two_nodes["restart_head"]()  # `dcluster up` again, same state dir and Redis: the GCS comes back at its address
    restarted_s = time.time() - killed_at
    wait_for(lambda: _healthy(url), timeout_s=120, what="the API after the head restart")
    # The actors were restarted by the recovered GCS. They prefer a joined node, but the preference is soft: the
    # restarted head's raylet may place one before it has heard of the member's resources, so either node will do.
    wait_for(lambda: head.actors() | member.actors() == set(ACTORS), timeout_s=120, what="the actors restarted")
    on_member = member.actors()
    print(f"after the head restart: {sorted(on_member)} on the member, {sorted(head.actors())} on the head")
    after = _stored_once_answering(url, root, buyer, cid, "the head restart")
    assert after == before  # nothing stored is lost; the buyer's cluster runs on, its token unchanged
    assert agent.proc.poll() is None and agent.proc.pid == agent_pid  # the agent was not restarted
    beat = wait_for(
        lambda: _ok(provider.get(f"/v1/machines/{machine['id']}"))["last_heartbeat"],
        timeout_s=60,
        what="the machine read back",
    )
    wait_for(
        lambda: provider.get(f"/v1/machines/{machine['id']}").json()["last_heartbeat"] > beat,
        timeout_s=60,
        what="heartbeats after the head restart",
    )

    # 2. The member is lost: the actors it held come back on the other node (the new head), the rest stay there.
    member.kill_9()
    wait_for(lambda: head.actors() == set(ACTORS), timeout_s=180, what="the actors back on the head")
    wait_for(lambda: _healthy(url), timeout_s=120, what="the API after the member's loss")
    assert _stored_once_answering(url, root, buyer, cid, "the member's loss") == before
    assert agent.proc.poll() is None and agent.proc.pid == agent_pid

    # 3. The running cluster still expires on time, once.
    deadline = before["cluster"]["expires_at"]
    assert time.time() < deadline - 5, f"the drill took too long ({restarted_s:.0f} s to restart the head)"
    wait_for(
        lambda: buyer.get(f"/v1/clusters/{cid}").json()["status"] == "expired",
        timeout_s=deadline - time.time() + 120,
        interval_s=1,
        what="the cluster expired",
    )
    starts = [e for e in buyer.get(f"/v1/clusters/{cid}/events").json() if e["kind"] == "terminating"]
    assert len(starts) == 1, starts
    lateness = starts[0]["ts"] - deadline
    print(f"head restarted in {restarted_s:.1f} s; expiry {lateness:+.3f} s from the deadline")
    assert 0 <= lateness <= 2.0, f"teardown began {lateness:.3f} s after the deadline"
