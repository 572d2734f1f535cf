"""ClusterManager logic with a real store (SQLite, and PostgreSQL), a fake clock, a fake registry and a fake
launcher."""

import asyncio
import dataclasses
import inspect

import pytest

from actors.access import auth
from actors.backends import launcher as launcher_mod
from actors.clusters import cluster_manager, lifecycle, node_observer
from actors.db import cluster_store, store
from actors.machines import registry as registry_mod
from actors.settings import PlatformSettings
from dcl_core import domain, errors, protocol
from dcl_core.cluster_spec import ClusterSpec
from tests import lease_versions, waiting
from tests.protocols import assert_implements

pytestmark = pytest.mark.anyio


class FakeRegistry:
    """Answers work items as a healthy agent would (same methods as the ProviderRegistry)."""

    def __init__(self, clock=None, offline_after_s: float = 15.0):
        self.sent: list[tuple[str, str, dict]] = []
        self.fail_kinds: set[str] = set()
        self.fail_opens_on: set[str] = set()  # machines whose agent cannot open a lease
        self.clock, self.offline_after_s = clock, offline_after_s
        self.held: dict[str, dict] = {}  # what agents' heartbeats said they hold
        self.liveness_asked: list[list[str] | None] = []  # the machines each lease_liveness call asked about
        self.roles: dict[str, str] = {}  # lease id → role, from its LEASE_OPEN
        self.nodes: dict[str, str] = {}  # lease id → role of the Ray node `ray start` left running
        self.no_node_for: set[str] = set()  # roles whose agent answers ok to `ray start` and runs nothing

    async def lease_liveness(self, machine_ids=None) -> dict:
        self.liveness_asked.append(machine_ids)
        held = self.held if machine_ids is None else {m: h for m, h in self.held.items() if m in machine_ids}
        return {"silence_cutoff": self.clock() - self.offline_after_s, "held": held}

    async def signing_secret(self) -> str:
        return "s" * 48

    async def send_work(
        self, machine_id: str, kind: str, payload: protocol.WorkPayload, timeout_s: float
    ) -> protocol.WorkResult:
        return protocol.WorkResult.model_validate(await self.answer(machine_id, kind, payload.model_dump(), timeout_s))

    async def answer(self, machine_id: str, kind: str, payload: dict, timeout_s: float) -> dict:
        """What the fake agent answers, as the JSON it would post (tests wrap it to change an answer)."""
        self.sent.append((machine_id, kind, payload))
        if kind in self.fail_kinds or (kind == protocol.LEASE_OPEN and machine_id in self.fail_opens_on):
            return {"ok": False, "exit_code": 1, "output": "boom", "data": {}}
        if kind == protocol.LEASE_CLOSE:
            self.nodes.pop(payload["lease_id"], None)
        if (
            kind == protocol.LEASE_EXEC
            and "ray start" in payload["cmd"]
            and self.roles[payload["lease_id"]] not in self.no_node_for
        ):
            self.nodes[payload["lease_id"]] = self.roles[payload["lease_id"]]
        if kind == protocol.LEASE_OPEN:
            self.roles[payload["lease_id"]] = payload["role"]
            ports = {
                k: 20000 + i
                for i, k in enumerate(
                    [
                        "gcs",
                        "dashboard",
                        "client_server",
                        "node_manager",
                        "object_manager",
                        "dashboard_agent_listen",
                        "dashboard_agent_grpc",
                        "runtime_env_agent",
                        "metrics_export",
                        "autoscaler_metric",
                        "dashboard_metric",
                        "min_worker",
                        "max_worker",
                    ]
                )
            }
            return {"ok": True, "exit_code": 0, "output": "", "data": {"ports": ports, "node_ip": "10.9.9.9"}}
        return {"ok": True, "exit_code": 0, "output": "", "data": {}}


class FakeObserver:
    """Lists the nodes `ray start` left running on the fake agents (same methods as the NodeObserver)."""

    def __init__(self, registry: FakeRegistry):
        self.registry = registry
        self.calls = 0
        self.hidden_calls = 0  # this many more calls list nothing (the raylet has not registered yet)
        self.listed_at: list[float] = []  # the clock at each call that listed nodes

    async def alive_nodes(self, node_ip: str, dashboard_port: int, token: str) -> list[node_observer.ObservedNode]:
        self.calls += 1
        if self.hidden_calls > 0:
            self.hidden_calls -= 1
            raise node_observer.ObserveError("connection refused")
        self.listed_at.append(self.registry.clock())
        return [
            node_observer.ObservedNode(f"n-{lease_id}", node_ip, role == "head", {protocol.LEASE_LABEL: lease_id})
            for lease_id, role in self.registry.nodes.items()
        ]


def test_fake_observer_matches_the_real_one():
    def shape(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    proto = shape(node_observer.Observer.alive_nodes)
    assert shape(node_observer.NodeObserver.alive_nodes) == proto
    assert shape(FakeObserver.alive_nodes) == proto


class FakeLauncher:
    """Does through the node API what the real launcher and the head's autoscaler do."""

    def __init__(self, clock):
        self.manager = None
        self.clock = clock
        self.created, self.torn_down = [], []
        self.fail = False

    async def create(self, config: dict) -> None:
        self.created.append(config)
        if self.fail:
            raise RuntimeError("head start command failed")
        if config["provider"]["type"] == "aws":
            return  # EC2 nodes: nothing goes through the node routes
        cid = config["provider"]["cluster_id"]
        principal = auth.TokenIssuer("s" * 48, clock=self.clock).verify(config["provider"]["token"])
        (head,) = await self.manager.create_nodes(principal, cid, "head", "head", {"ray-node-type": "head"}, 1)
        result = await self.manager.exec_on_node(
            principal, cid, head["id"], protocol.Exec(op="run", cmd="ray start --head")
        )
        if not result.ok:  # the launcher stops at a failed head start
            raise RuntimeError(f"head start failed: {result.output}")
        # The autoscaler's first update: workers already listed (opened ahead by the platform) get Ray at
        # once, the missing ones are launched.
        n = config["available_node_types"]["worker"]["min_workers"]
        workers = [
            x
            for x in await self.manager.list_nodes(principal, cid)
            if x["status"] == "open" and x["tags"].get("ray-node-type") == "worker"
        ]
        for w in workers:
            await self.manager.set_node_tags(principal, cid, w["id"], {"ray-node-status": "waiting-for-ssh"})
        if len(workers) < n:
            workers += await self.manager.create_nodes(principal, cid, "worker", "worker", {}, n - len(workers))
        for w in workers:
            await self.manager.exec_on_node(
                principal, cid, w["id"], protocol.Exec(op="run", cmd="export X=1; ray start")
            )

    async def teardown(self, config: dict) -> None:
        self.torn_down.append(config["cluster_name"])


def test_fakes_implement_the_protocols_of_what_they_stand_for():
    assert_implements(cluster_manager.Registry, FakeRegistry, registry_mod.ProviderRegistry)
    assert_implements(cluster_manager.Launcher, FakeLauncher, launcher_mod.RayClusterLauncher)


@dataclasses.dataclass
class Env:
    manager: cluster_manager.ClusterManager
    registry: FakeRegistry
    launcher: FakeLauncher
    buyer: auth.Principal
    db: store.Store
    store: cluster_store.ClusterStore  # the manager's
    settings: PlatformSettings
    observer: FakeObserver  # what the manager asks which nodes are alive

    def __iter__(self):
        return iter((self.manager, self.registry, self.launcher, self.buyer, self.db))


def build_manager(settings, registry, clock, **options):
    launcher = FakeLauncher(clock)
    cstore = cluster_store.ClusterStore(settings.db_location)

    async def sleep(seconds):  # waiting moves the fake clock
        clock.advance(seconds)
        await asyncio.sleep(0)

    options.setdefault("observer", FakeObserver(registry))
    manager = cluster_manager.ClusterManager(
        cstore, settings, registry=registry, launcher=launcher, clock=clock, sleep=sleep, **options
    )
    launcher.manager = manager
    return manager, launcher, cstore


async def seed_market(db, clock) -> dict:
    """A buyer, and a provider with two online 4-CPU machines (m-000000000000, m-000000000001); the buyer's row."""
    buyer = await db.create_account("buyer", "h", domain.Role.BUYER, clock())
    prov = await db.create_account("prov", "h", domain.Role.PROVIDER, clock())
    for i in range(2):
        await db.upsert_machine(
            machine_id=f"m-00000000000{i}",
            provider_id=prov["id"],
            machine_key=f"key-0000{i}",
            name=f"n{i}",
            spec=domain.MachineSpec(hostname="h", cpus=4, memory_mb=1000, **lease_versions.SPEC_FIELDS),
            price_per_gpu_hour=0,
            price_per_cpu_hour=0.1,
            now=clock(),
        )
    return buyer


@pytest.fixture
def env(db_location, tmp_path, clock, closing):
    """Builds the platform under test; its stores are closed after the test, pass or fail."""

    async def build(**options):
        settings = PlatformSettings(
            state_dir=tmp_path,
            heartbeat_interval_s=5,
            api_url="http://127.0.0.1:9",
            database=db_location if isinstance(db_location, str) else None,
        )
        db = store.Store(settings.db_location)
        closing.push_async_callback(db.close)
        buyer = await seed_market(db, clock)
        registry = FakeRegistry(clock, settings.offline_after_s)
        observer = options.setdefault("observer", FakeObserver(registry))
        manager, launcher, cstore = build_manager(settings, registry, clock, **options)
        closing.push_async_callback(cstore.close)
        await manager.start()
        principal = auth.Principal(buyer["id"], "buyer", domain.Role.BUYER)
        return Env(manager, registry, launcher, principal, db, cstore, settings, observer)

    return build


async def settle(manager):
    for _ in range(50):
        await asyncio.sleep(0)
    while work := manager.background_work():
        await asyncio.gather(*work.values(), return_exceptions=True)


async def test_create_to_running_to_terminated(env, clock):
    e = await env()
    manager, registry, launcher, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=2, duration_s=600))
    # The answer is read after provisioning was started: on a store that yields (PostgreSQL) it may
    # already have begun.
    assert c["status"] in ("pending", "provisioning") and len(c["nodes"]) == 3
    await settle(manager)
    await manager.reconcile_once()
    c = await manager.get_cluster(buyer, c["id"])
    assert c["status"] == "running" and c["workers_joined"] == 2
    opens = [p for _, k, p in registry.sent if k == protocol.LEASE_OPEN]
    assert {p["labels"]["dcluster.io/cluster"] for p in opens} == {c["id"]}
    worker_opens = [p for p in opens if p["role"] == "worker"]
    assert all(p["head_gcs_port"] == 20000 for p in worker_opens)
    assert all(p["resources"] == {f"provider_{p['labels']['dcluster.io/machine']}": 1.0} for p in worker_opens)
    conn = await manager.connection(buyer, c["id"])
    assert conn["gcs_address"] == "10.9.9.9:20000" and len(conn["ray_auth_token"]) == 64
    d = await manager.delete_cluster(buyer, c["id"])
    assert d["status"] == "terminating"
    await settle(manager)
    c = await manager.get_cluster(buyer, c["id"])
    assert c["status"] == "terminated" and launcher.torn_down == [c["id"]]
    assert all(n["status"] == "closed" for n in c["nodes"])
    assert (await manager.delete_cluster(buyer, c["id"]))["status"] == "terminated"
    kinds = [e["kind"] for e in await manager.cluster_events(buyer, c["id"])]
    assert kinds[0] == "created" and "running" in kinds and kinds[-1] == "terminated"


async def test_short_capacity_is_409_and_leaves_nothing(env):
    e = await env()
    manager, _, _, buyer, db = e
    with pytest.raises(errors.Conflict, match="not enough capacity") as caught:
        await manager.create_cluster(buyer, ClusterSpec(num_workers=8, duration_s=600))
    assert caught.value.fields["available"]["cpu-only"]["free_cpus"] == 8
    assert await manager.list_clusters(buyer) == []


async def test_launcher_failure_fails_with_reason_and_releases(env):
    e = await env()
    manager, _, launcher, buyer, db = e
    launcher.fail = True
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    c = await manager.get_cluster(buyer, c["id"])
    assert c["status"] == "failed" and "head start command failed" in c["reason"]
    assert all(n["status"] == "closed" for n in c["nodes"])
    # The machines are free again.
    c2 = await manager.create_cluster(buyer, ClusterSpec(num_workers=3, duration_s=600))
    assert len(c2["nodes"]) == 4
    await settle(manager)


async def test_restart_during_provisioning_fails_and_cleans_up(env, tmp_path, clock, closing):
    e = await env()
    manager, registry, launcher, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    for task in manager.background_work().values():
        task.cancel()  # the actor died mid-launch
    await asyncio.sleep(0)
    again, _, again_store = build_manager(e.settings, registry, clock)
    closing.push_async_callback(again_store.close)
    await again.start()
    await settle(again)
    got = await again.get_cluster(buyer, c["id"])
    assert got["status"] == "failed" and "restarted" in got["reason"]
    assert all(n["status"] == "closed" for n in got["nodes"])


async def test_expiry_and_lost_head(env, clock):
    e = await env()
    manager, _, _, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=60))
    await settle(manager)
    clock.advance(61)
    assert await manager.expire(c["id"], c["expires_at"])  # what the ExpiryReaper calls at the deadline
    assert not await manager.expire(c["id"], c["expires_at"])  # never twice
    for m in ("m-000000000000", "m-000000000001"):  # keep machines fresh
        await db.record_heartbeat(m, clock(), domain.MachineUsage())
    await manager.reconcile_once()
    await settle(manager)
    assert (await manager.get_cluster(buyer, c["id"]))["status"] == "expired"

    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    head = next(n for n in (await manager.get_cluster(buyer, c["id"]))["nodes"] if n["role"] == "head")
    clock.advance(30)  # every machine silent for 6 beats
    await manager.reconcile_once()
    await settle(manager)
    got = await manager.get_cluster(buyer, c["id"])
    assert got["status"] == "failed" and head["machine_id"] in got["reason"]


async def test_a_node_its_agent_no_longer_holds_is_lost(env, clock):
    """An agent restarted (it cleans up its previous run's leases) while its machine stayed online."""

    e = await env()
    manager, registry, _, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    nodes = (await manager.get_cluster(buyer, c["id"]))["nodes"]
    assert {n["status"] for n in nodes} == {"open"}
    head = next(n for n in nodes if n["role"] == "head")
    clock.advance(5)
    for m in ("m-000000000000", "m-000000000001"):
        await db.record_heartbeat(m, clock(), domain.MachineUsage())
    # A heartbeat sent right after the nodes opened may not list them yet: no verdict.
    registry.held = {m: {"at": clock(), "leases": []} for m in ("m-000000000000", "m-000000000001")}
    await manager.reconcile_once()
    assert (await manager.get_cluster(buyer, c["id"]))["status"] == "running"
    assert registry.liveness_asked[-1] == sorted({n["machine_id"] for n in nodes})  # its nodes' machines alone
    # Later heartbeats still without the head: its agent no longer runs it.
    clock.advance(lifecycle.HELD_MARGIN_S + 1)
    for m in ("m-000000000000", "m-000000000001"):
        await db.record_heartbeat(m, clock(), domain.MachineUsage())
    registry.held = {
        m: {"at": clock(), "leases": [n["id"] for n in nodes if n["id"] != head["id"]]}
        for m in ("m-000000000000", "m-000000000001")
    }
    await manager.reconcile_once()
    await settle(manager)
    got = await manager.get_cluster(buyer, c["id"])
    assert got["status"] == "failed" and "no longer runs it" in got["reason"], got["reason"]


async def test_other_buyers_and_scoped_credentials(env):
    e = await env()
    manager, _, _, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    other = auth.Principal(999, "other", domain.Role.BUYER)
    with pytest.raises(errors.NotFound):
        await manager.get_cluster(other, c["id"])
    wrong_scope = auth.Principal(buyer.account_id, "x", domain.Role.BUYER, cluster_id="c-000000000000")
    with pytest.raises(errors.NotFound):
        await manager.list_nodes(wrong_scope, c["id"])
    await settle(manager)


async def test_proxy_targets_are_the_callers_own_joined_nodes_as_recorded(env):
    e = await env()
    manager, _, _, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    with pytest.raises(errors.Conflict, match="has not joined"):
        await manager.proxy_target(buyer, c["id"], "dashboard")
    await settle(manager)
    await manager.reconcile_once()
    head = await manager.proxy_target(buyer, c["id"], "dashboard")
    assert head["host"] == "10.9.9.9" and head["port"] == 20001 and len(head["token"]) == 64
    worker = next(n for n in (await manager.get_cluster(buyer, c["id"]))["nodes"] if n["role"] == "worker")
    assert await manager.proxy_target(buyer, c["id"], "metrics", worker["id"]) == {
        "host": "10.9.9.9",
        "port": 20008,
    }
    with pytest.raises(errors.InvalidInput, match="only metrics take a node"):
        await manager.proxy_target(buyer, c["id"], "dashboard", worker["id"])
    with pytest.raises(errors.NotFound):
        await manager.proxy_target(buyer, c["id"], "metrics", "l-000000000000")
    with pytest.raises(errors.NotFound):
        await manager.proxy_target(auth.Principal(999, "other", domain.Role.BUYER), c["id"], "dashboard")
    admin = auth.Principal(998, "root", domain.Role.ADMIN)
    assert (await manager.proxy_target(admin, c["id"], "metrics"))["port"] == 20008
    await manager.delete_cluster(buyer, c["id"])
    await settle(manager)
    with pytest.raises(errors.Conflict, match="went with its nodes"):
        await manager.proxy_target(buyer, c["id"], "dashboard")


def test_a_node_address_that_is_not_a_plain_ip_is_never_a_proxy_target():
    from actors.clusters import cluster_views
    from tests import typed_rows

    head = {"role": "head", "status": "open", "joined_at": 1.0, "ports": {"dashboard": 8265, "metrics_export": 8080}}
    running = domain.ClusterStatus.RUNNING
    for address in ("evil.example.com", "0.0.0.0", "224.0.0.1", "255.255.255.255", "127.0.0.1:9", "http://127.0.0.1"):
        with pytest.raises(errors.Conflict, match="no usable address"):
            nodes = [typed_rows.lease(**head, node_ip=address)]
            cluster_views.proxy_target("c-000000000000", running, nodes, "dashboard", None)
    with pytest.raises(errors.InvalidInput):
        nodes = [typed_rows.lease(**head, node_ip="10.0.0.1")]
        cluster_views.proxy_target("c-000000000000", running, nodes, "gcs", None)


async def test_aws_backend_only_when_enabled(env, tmp_path, clock, closing):
    from configs import aws

    e = await env()
    manager, _, launcher, buyer, db = e
    with pytest.raises(errors.InvalidInput, match="not enabled"):
        await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600, backend="aws"))
    await e.store.close()
    # The same platform restarted with an `aws:` block in its settings.
    manager, launcher, e.store = build_manager(
        e.settings.model_copy(update={"aws": aws.AwsSettings(allowed_cidr="203.0.113.0/24")}), e.registry, clock
    )
    closing.push_async_callback(e.store.close)
    await manager.start()
    c = await manager.create_cluster(
        buyer, ClusterSpec(num_workers=2, gpus_per_worker=1, duration_s=600, backend="aws")
    )
    assert c["nodes"] == []  # no provider machine is leased
    await settle(manager)
    (config,) = launcher.created
    assert config["provider"]["type"] == "aws" and config["provider"]["security_group"]["IpPermissions"]
    assert (await manager.get_cluster(buyer, c["id"]))["status"] == "running"
    await manager.delete_cluster(buyer, c["id"])
    await settle(manager)
    assert (await manager.get_cluster(buyer, c["id"]))["status"] == "terminated"
    assert launcher.torn_down == [c["id"]]


async def test_sweep_closes_leases_no_live_cluster_owns(env, clock):
    e = await env()
    manager, registry, _, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    # A crash between steps: the cluster is recorded as ended while its nodes are still open.
    lease = next(n for n in c["nodes"] if n["role"] == "worker")
    await e.store.set_cluster_status(c["id"], domain.ClusterStatus.FAILED, clock())
    got = await manager.sweep()
    assert got["leases_closed"] == 2  # head and worker
    assert (await e.store.get_lease(lease["id"])).status is domain.LeaseStatus.CLOSED
    assert lease["id"] in [p["lease_id"] for _, k, p in registry.sent if k == protocol.LEASE_CLOSE]
    assert (await manager.sweep())["leases_closed"] == 0


# --- a node a machine cannot open is retried elsewhere ---------------------------------------


async def test_a_node_that_fails_to_open_is_moved_to_another_machine(env):
    e = await env()
    manager, registry, _, buyer, db = e
    registry.fail_opens_on = {"m-000000000000"}  # e.g. an agent whose first opens failed
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    await manager.reconcile_once()
    c = await manager.get_cluster(buyer, c["id"])
    assert c["status"] == "running", c["reason"]
    live = [n for n in c["nodes"] if n["status"] == "open"]
    assert {n["machine_id"] for n in live} == {"m-000000000001"} and len(live) == 2
    assert all(n["status"] == "lost" for n in c["nodes"] if n["machine_id"] == "m-000000000000")
    events = await manager.cluster_events(buyer, c["id"])
    failed = [e["message"] for e in events if e["kind"] == "lease_failed"]
    retries = [e["message"] for e in events if e["kind"] == "node_retry"]
    assert failed and all("attempt 1 of 3" in m and "m-000000000000" in m for m in failed)
    assert retries and all("attempt 2 of 3 on machine m-000000000001" in m for m in retries)
    # Nothing still holds capacity on the machine that failed.
    assert not [l for l in await e.store.active_leases() if l.machine_id == "m-000000000000"]


async def test_a_machine_reporting_a_host_name_for_its_node_is_refused_and_the_node_closed_again(env):
    e = await env()
    manager, registry, _, buyer, db = e
    answer = registry.answer

    async def lying(machine_id, kind, payload, timeout_s):
        got = await answer(machine_id, kind, payload, timeout_s)
        if kind == protocol.LEASE_OPEN and machine_id == "m-000000000000":
            got["data"]["node_ip"] = "metadata.internal.example"  # the platform would resolve and connect to it
        return got

    registry.answer = lying
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    await manager.reconcile_once()
    c = await manager.get_cluster(buyer, c["id"])
    assert c["status"] == "running", c["reason"]
    assert {n["machine_id"] for n in c["nodes"] if n["status"] == "open"} == {"m-000000000001"}
    events = await manager.cluster_events(buyer, c["id"])
    failed = [e["message"] for e in events if e["kind"] == "lease_failed"]
    assert failed and all("unusable address" in m and "not a literal IP address" in m for m in failed)
    closed = {p["lease_id"] for m, k, p in registry.sent if k == protocol.LEASE_CLOSE and m == "m-000000000000"}
    opened = {p["lease_id"] for m, k, p in registry.sent if k == protocol.LEASE_OPEN and m == "m-000000000000"}
    assert opened and closed == opened


async def test_a_node_no_machine_can_open_fails_the_cluster_after_bounded_attempts(env):
    e = await env()
    manager, registry, _, buyer, db = e
    registry.fail_opens_on = {"m-000000000000", "m-000000000001"}
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    c = await manager.get_cluster(buyer, c["id"])
    assert c["status"] == "failed" and "could not be opened in 3 attempts" in c["reason"]
    head_opens = [m for m, k, p in registry.sent if k == protocol.LEASE_OPEN and p["role"] == "head"]
    assert len(head_opens) == protocol.NODE_OPEN_ATTEMPTS
    assert head_opens[0] != head_opens[1]  # the second try went to the other machine
    kinds = [e["kind"] for e in await manager.cluster_events(buyer, c["id"])]
    assert kinds.count("lease_failed") == 3 and kinds.count("node_retry") == 2
    assert await e.store.active_leases() == []


# --- quotas and the buyer's price ceiling -------------------------------------------------------


async def add_machine(
    db,
    clock,
    machine_id: str,
    *,
    cpus: int,
    gpus=(),
    price_per_gpu_hour: float = 0.0,
    price_per_cpu_hour: float = 0.1,
    ray: str = lease_versions.RAY,
    python: str = lease_versions.PYTHON,
) -> None:
    """One more online machine, of a provider of its own, its leases running Ray `ray` on Python `python`."""
    prov = await db.create_account("prov-" + machine_id, "h", domain.Role.PROVIDER, clock())
    await db.upsert_machine(
        machine_id=machine_id,
        provider_id=prov["id"],
        machine_key="key-" + machine_id,
        name=machine_id,
        spec=domain.MachineSpec(
            hostname="h", cpus=cpus, memory_mb=1000, gpus=list(gpus), ray_version=ray, python_version=python
        ),
        price_per_gpu_hour=price_per_gpu_hour,
        price_per_cpu_hour=price_per_cpu_hour,
        now=clock(),
    )


async def test_quotas_refuse_with_403_naming_the_limit_and_admins_set_them(env, clock):
    e = await env()
    manager, _, _, buyer, db = e
    admin_row = await db.create_account("root", "h", domain.Role.ADMIN, clock())
    admin = auth.Principal(admin_row["id"], "root", domain.Role.ADMIN)
    with pytest.raises(errors.Forbidden, match="only an admin"):
        await manager.set_quota(buyer, buyer.account_id, {"max_clusters": 99})
    q = await manager.set_quota(admin, buyer.account_id, {"max_clusters": 1, "max_cpus": 3})
    assert q["limits"]["max_clusters"] == 1 and q["limits"]["max_gpus"] == 64
    assert q["overrides"] == {"max_clusters": 1, "max_gpus": None, "max_cpus": 3, "max_gpu_hours": None}
    with pytest.raises(errors.Forbidden, match="quota max_cpus exceeded"):
        await manager.create_cluster(buyer, ClusterSpec(num_workers=3, duration_s=600))  # 3 + a head's 1 > 3
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    with pytest.raises(errors.Forbidden, match="quota max_clusters exceeded"):
        await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    seen = await manager.get_quota(buyer, buyer.account_id)
    assert seen["used"] == {"clusters": 1, "gpus": 0, "cpus": 2, "gpu_hours": 0}
    with pytest.raises(errors.NotFound):
        await manager.get_quota(buyer, admin.account_id)  # another account's: not there
    with pytest.raises(errors.InvalidInput, match="quotas limit buyers"):
        await manager.set_quota(admin, admin.account_id, {})
    await settle(manager)
    await manager.delete_cluster(buyer, c["id"])
    await settle(manager)
    # Ended clusters no longer count; resetting an override brings back the default.
    await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    q = await manager.set_quota(admin, buyer.account_id, {})
    assert q["limits"]["max_clusters"] == 10 and q["overrides"]["max_clusters"] is None
    await settle(manager)


async def test_gpu_hours_count_lifetimes_and_extensions(env, clock):
    e = await env()
    manager, _, _, buyer, db = e
    gpus = [domain.GpuInfo(index=i, model="T4", memory_mb=16000) for i in range(4)]
    await add_machine(db, clock, "m-gpu000000000", cpus=8, gpus=gpus, price_per_gpu_hour=1.0)
    admin = auth.Principal(999, "root", domain.Role.ADMIN)
    await manager.set_quota(admin, buyer.account_id, {"max_gpu_hours": 10})
    with pytest.raises(errors.Forbidden, match="quota max_gpu_hours exceeded"):  # 4 GPUs × 3 h = 12
        await manager.create_cluster(buyer, ClusterSpec(num_workers=2, gpus_per_worker=2, duration_s=3 * 3600))
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=2, gpus_per_worker=2, duration_s=2 * 3600))
    with pytest.raises(errors.Forbidden, match="quota max_gpu_hours exceeded"):  # 8 + 4 × 1 h > 10
        await manager.extend_cluster(buyer, c["id"], 3600)
    await manager.extend_cluster(buyer, c["id"], 1800)  # 8 + 2 = 10: exactly the limit
    await settle(manager)


async def test_max_price_is_kept_with_the_spec_and_holds_for_replacements(env, clock):
    e = await env()
    manager, registry, _, buyer, db = e
    await add_machine(db, clock, "m-dear00000000", cpus=64, price_per_cpu_hour=10_000)
    with pytest.raises(errors.Conflict, match=r"the cheapest machine that fits the worker costs \$0.1 per CPU-hour"):
        await manager.create_cluster(
            buyer, ClusterSpec(num_workers=1, cpus_per_worker=2, duration_s=600, max_price_per_cpu_hour=0.05)
        )
    c = await manager.create_cluster(
        buyer, ClusterSpec(num_workers=1, cpus_per_worker=2, duration_s=600, max_price_per_cpu_hour=0.5)
    )
    assert c["max_price_per_cpu_hour"] == 0.5 and c["max_price_per_gpu_hour"] is None
    assert "m-dear00000000" not in {n["machine_id"] for n in c["nodes"]}
    await settle(manager)
    await manager.reconcile_once()
    # Both cheap machines fail to open anything now: a replacement must not go to the dear one.
    registry.fail_opens_on = {"m-000000000000", "m-000000000001"}
    principal = auth.Principal(buyer.account_id, "cluster-" + c["id"], domain.Role.BUYER, cluster_id=c["id"])
    (worker,) = [n for n in (await manager.get_cluster(buyer, c["id"]))["nodes"] if n["role"] == "worker"]
    await manager.terminate_node(principal, c["id"], worker["id"])
    with pytest.raises(errors.Conflict):
        await manager.create_nodes(principal, c["id"], "worker", "worker", {}, 1)
    assert not [m for m, k, _ in registry.sent if k == protocol.LEASE_OPEN and m == "m-dear00000000"]


# --- joined and billed from what the cluster's GCS shows, not from command text -----------------


async def test_a_node_joins_when_it_is_seen_alive_at_that_moment(env, clock):
    e = await env()
    manager, _, _, buyer, db = e
    e.observer.hidden_calls = 2  # the head's dashboard answers from the third poll
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    c = await manager.get_cluster(buyer, c["id"])
    assert c["status"] == "running", c["reason"]  # at once, without a reconcile tick
    head = next(n for n in c["nodes"] if n["role"] == "head")
    assert head["joined_at"] == e.observer.listed_at[0] > c["created_at"]
    assert (await manager.connection(buyer, c["id"]))["gcs_address"] == "10.9.9.9:20000"
    kinds = [e["kind"] for e in await manager.cluster_events(buyer, c["id"])]
    assert kinds.count("head_joined") == 1 and kinds.count("worker_joined") == 1


async def test_an_ok_without_a_live_node_is_neither_joined_nor_billed(env, clock):
    manager, registry, _, buyer, db = await env()
    registry.no_node_for = {"worker"}
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    clock.advance(60)
    for m in ("m-000000000000", "m-000000000001"):
        await db.record_heartbeat(m, clock(), domain.MachineUsage())
    await manager.reconcile_once()
    got = await manager.get_cluster(buyer, c["id"])
    worker = next(n for n in got["nodes"] if n["role"] == "worker")
    assert got["status"] == "provisioning" and got["workers_joined"] == 0
    assert worker["status"] == "open" and worker["joined_at"] is None
    events = await manager.cluster_events(buyer, c["id"])
    (failed,) = [e["message"] for e in events if e["kind"] == "join_failed"]
    assert worker["id"] in failed and "not ALIVE" in failed
    # The autoscaler is told the start failed (it replaces the node), as for any failed `ray start`.
    scoped = auth.Principal(buyer.account_id, "cluster-" + c["id"], domain.Role.BUYER, cluster_id=c["id"])
    again = await manager.exec_on_node(scoped, c["id"], worker["id"], protocol.Exec(op="run", cmd="ray start"))
    assert not again.ok and "treated as a failed start" in again.output
    # Only the head, seen alive, is billed; the provider of the worker's machine earns nothing for it.
    usage = await manager.usage(buyer, 0, clock())
    assert usage["items"][0]["nodes"] == 1 and usage["total"]["node_seconds"] > 0
    # Started later by other means, the node counts from when it is seen.
    registry.nodes[worker["id"]] = "worker"
    clock.advance(1)
    for m in ("m-000000000000", "m-000000000001"):
        await db.record_heartbeat(m, clock(), domain.MachineUsage())
    await manager.reconcile_once()
    got = await manager.get_cluster(buyer, c["id"])
    assert got["status"] == "running"
    assert next(n for n in got["nodes"] if n["role"] == "worker")["joined_at"] == clock()


async def test_a_head_that_never_shows_up_fails_the_launch(env, clock):
    manager, registry, _, buyer, db = await env()
    registry.no_node_for = {"head"}
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    got = await manager.get_cluster(buyer, c["id"])
    assert got["status"] == "failed" and "not ALIVE" in got["reason"]
    assert all(n["joined_at"] is None and n["status"] in ("closed", "reserved") for n in got["nodes"])
    assert (await manager.usage(buyer, 0, clock()))["total"]["node_seconds"] == 0


async def test_a_degraded_cluster_still_expires_and_replacements_never_extend_it(env, clock):
    from actors.clusters import expiry_reaper

    e = await env()
    manager, registry, _, buyer, db = e
    reaper = expiry_reaper.ExpiryReaper(e.store, clusters=manager, clock=clock)
    await reaper.start()
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    await reaper.schedule(c["id"])
    scoped = auth.Principal(buyer.account_id, "cluster-" + c["id"], domain.Role.BUYER, cluster_id=c["id"])
    for _ in range(3):  # close and re-create the worker, again and again
        clock.advance(100)
        for m in ("m-000000000000", "m-000000000001"):
            await db.record_heartbeat(m, clock(), domain.MachineUsage())
        (worker,) = [
            n
            for n in (await manager.get_cluster(buyer, c["id"]))["nodes"]
            if n["role"] == "worker" and n["status"] == "open"
        ]
        await manager.terminate_node(scoped, c["id"], worker["id"])
        await manager.reconcile_once()
        assert (await manager.get_cluster(buyer, c["id"]))["status"] == "degraded"
        (new,) = await manager.create_nodes(scoped, c["id"], "worker", "worker", {}, 1)
        await manager.exec_on_node(scoped, c["id"], new["id"], protocol.Exec(op="run", cmd="ray start"))
        got = await manager.get_cluster(buyer, c["id"])
        assert got["status"] == "running" and got["expires_at"] == c["expires_at"]
    # The last replacement never comes up: degraded, and it still ends at the original deadline.
    registry.no_node_for = {"worker"}
    (worker,) = [
        n
        for n in (await manager.get_cluster(buyer, c["id"]))["nodes"]
        if n["role"] == "worker" and n["status"] == "open"
    ]
    await manager.terminate_node(scoped, c["id"], worker["id"])
    (new,) = await manager.create_nodes(scoped, c["id"], "worker", "worker", {}, 1)
    await manager.exec_on_node(scoped, c["id"], new["id"], protocol.Exec(op="run", cmd="ray start"))
    for m in ("m-000000000000", "m-000000000001"):  # the wait for the node moved the clock
        await db.record_heartbeat(m, clock(), domain.MachineUsage())
    await manager.reconcile_once()
    assert (await manager.get_cluster(buyer, c["id"]))["status"] == "degraded"
    assert await reaper.fire_due() == []
    clock.now = c["expires_at"]
    assert await reaper.fire_due() == [c["id"]]
    await settle(manager)
    got = await manager.get_cluster(buyer, c["id"])
    assert got["status"] == "expired" and got["expires_at"] == c["expires_at"]
    # Billed: each node from when it was seen to when its close was confirmed; never past the deadline.
    assert all(n["left_at"] <= c["expires_at"] + 1 for n in got["nodes"] if n["joined_at"])
    assert next(n for n in got["nodes"] if n["id"] == new["id"])["joined_at"] is None


async def test_lost_nodes_lower_their_machines_reliability_and_the_floor_skips_them(env, clock):
    e = await env()
    c = await e.manager.create_cluster(e.buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(e.manager)
    worker = next(n for n in (await e.manager.get_cluster(e.buyer, c["id"]))["nodes"] if n["role"] == "worker")
    assert await e.store.end_lease(worker["id"], domain.LeaseStatus.LOST, clock())
    assert not await e.store.end_lease(worker["id"], domain.LeaseStatus.LOST, clock())  # counted once
    row = await e.db.get_machine(worker["machine_id"])
    assert (row["leases_completed"], row["leases_lost"]) == (0, 1)
    await e.manager.delete_cluster(e.buyer, c["id"])
    await settle(e.manager)
    head = next(n for n in (await e.manager.get_cluster(e.buyer, c["id"]))["nodes"] if n["role"] == "head")
    assert (await e.db.get_machine(head["machine_id"]))["leases_completed"] == 1
    # The machine that lost a node is now below 0.85; the other one is not.
    for m in ("m-000000000000", "m-000000000001"):
        await e.db.record_heartbeat(m, clock(), domain.MachineUsage())
    with pytest.raises(errors.Conflict, match="reliability of at least 0.85"):
        await e.manager.create_cluster(
            e.buyer, ClusterSpec(num_workers=2, duration_s=600, cpus_per_worker=2, min_reliability=0.85)
        )
    ok = await e.manager.create_cluster(e.buyer, ClusterSpec(num_workers=1, duration_s=600, min_reliability=0.85))
    assert worker["machine_id"] not in {n["machine_id"] for n in ok["nodes"]}


async def test_a_reconcile_tick_reads_the_leases_of_a_cluster_whose_nodes_all_joined_once(env, clock):
    """JoinWatcher's read is reused when it had nothing to ask the head; a cluster still joining is read afresh."""

    e = await env()
    manager, _, _, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=2, duration_s=600))
    await settle(manager)
    await manager.reconcile_once()
    assert (await manager.get_cluster(buyer, c["id"]))["status"] == "running"
    reads = []
    leases_of = e.store.leases_of

    async def counted(cluster_id):
        reads.append(cluster_id)
        return await leases_of(cluster_id)

    e.store.leases_of = counted
    await manager.reconcile_once()
    assert reads == [c["id"]]
    assert (await manager.get_cluster(buyer, c["id"]))["status"] == "running"


async def test_many_cluster_reads_at_once_answer_as_each_read_alone(env):
    e = await env()
    manager, _, _, buyer, db = e
    first = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    second = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)  # no provisioning step between the reads compared
    other = auth.Principal(999, "other", domain.Role.BUYER)
    provider = auth.Principal(998, "prov", domain.Role.PROVIDER)
    reads = [
        (buyer, first["id"]),
        (other, first["id"]),
        (buyer, second["id"]),
        (buyer, "c-ffffffffffff"),
        (provider, first["id"]),
        (buyer, first["id"]),
    ]
    answers = await manager.get_clusters(reads)
    alone = [await manager.get_cluster(buyer, cid) for cid in (first["id"], second["id"])]
    assert answers[0] == answers[5] == alone[0] and answers[2] == alone[1]
    assert isinstance(answers[1], errors.NotFound) and isinstance(answers[3], errors.NotFound)
    assert isinstance(answers[4], errors.Forbidden)


async def test_a_node_opened_after_its_cluster_ended_is_closed_again_never_counted_open(env, clock):
    """The head's launcher asks for the head node (the node route, its own request), the buyer deletes the
    cluster while the agent is still opening it: the teardown sees only a reservation. The opened node
    must then be closed on the machine, and the lease stay closed (it used to be marked open again, its
    sandbox left running and its capacity held for good)."""

    e = await env()
    manager, registry, launcher, buyer, db = e
    configs, launched, opening, answer = [], asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def launcher_that_waits(config):  # the launcher's task: its node request goes on without it
        configs.append(config)
        launched.set()
        await asyncio.Event().wait()

    launcher.create = launcher_that_waits
    agent_send = registry.answer

    async def slow_open(machine_id, kind, payload, timeout_s):
        if kind == protocol.LEASE_OPEN:
            opening.set()
            await answer.wait()
        return await agent_send(machine_id, kind, payload, timeout_s)

    registry.answer = slow_open

    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    await asyncio.wait_for(launched.wait(), 5)  # the provisioning task reaches the launcher
    node_caller = auth.TokenIssuer("s" * 48, clock=clock).verify(configs[0]["provider"]["token"])
    head_request = asyncio.ensure_future(
        manager.create_nodes(node_caller, c["id"], "head", "head", {"ray-node-type": "head"}, 1)
    )
    await asyncio.wait_for(opening.wait(), 5)
    await manager.delete_cluster(buyer, c["id"])
    await settle(manager)
    answer.set()  # the agent finishes opening the head
    with pytest.raises(errors.Conflict, match="ended while its head node"):
        await head_request
    await settle(manager)
    head = next(n for n in (await manager.get_cluster(buyer, c["id"]))["nodes"] if n["role"] == "head")
    closes = [p["lease_id"] for _, kind, p in registry.sent if kind == protocol.LEASE_CLOSE]
    assert head["status"] == "closed"
    assert head["id"] in closes


async def _head_only(e, clock, spec: ClusterSpec) -> tuple[dict, auth.Principal, dict]:
    """A cluster whose launcher opens only its head (as the real launcher does): the cluster, the
    cluster-scoped caller of the node routes (what the head's autoscaler holds) and the head node."""
    configs, launched = [], asyncio.Event()

    async def launcher_that_waits(config):
        configs.append(config)
        launched.set()
        await asyncio.Event().wait()

    e.launcher.create = launcher_that_waits
    c = await e.manager.create_cluster(e.buyer, spec)
    await asyncio.wait_for(launched.wait(), 5)  # the provisioning task reaches the launcher
    caller = auth.TokenIssuer("s" * 48, clock=clock).verify(configs[0]["provider"]["token"])
    (head,) = await e.manager.create_nodes(caller, c["id"], "head", "head", {"ray-node-type": "head"}, 1)
    return c, caller, head


async def _workers_listed(e, caller, cid) -> list[dict]:
    async def opened():
        workers = [n for n in await e.manager.list_nodes(caller, cid) if n["role"] == "worker"]
        return workers if workers and all(n["status"] == "open" for n in workers) else None

    return await waiting.wait_until(opened, timeout_s=5, interval_s=0.01, what="the workers opened ahead")


async def test_workers_are_opened_while_the_head_starts_and_listed_as_the_autoscalers_own(env, clock):
    """The head's autoscaler finds its workers in its first list (it starts Ray on them at once); once it
    tags them they are its own, and a later request (a replacement) never takes them for new ones."""

    e = await env()
    c, caller, head = await _head_only(e, clock, ClusterSpec(num_workers=1, duration_s=600))
    (worker,) = await _workers_listed(e, caller, c["id"])
    opens = [p for _, kind, p in e.registry.sent if kind == protocol.LEASE_OPEN]
    assert [p["role"] for p in opens] == ["head", "worker"]
    assert opens[1]["head_gcs_port"] == 20000  # its `ray start` finds the head (the fake agent's GCS port)
    assert worker["tags"] == {
        "ray-node-name": f"ray-{c['id']}-worker",
        "ray-node-type": "worker",
        "ray-node-status": "uninitialized",
        "ray-user-node-type": "worker",
        "dcluster-opened-ahead": "1",
    }
    # The autoscaler's updater tags it: claimed.
    tagged = await e.manager.set_node_tags(caller, c["id"], worker["id"], {"ray-node-status": "waiting-for-ssh"})
    assert "dcluster-opened-ahead" not in tagged["tags"] and tagged["tags"]["ray-node-status"] == "waiting-for-ssh"
    with pytest.raises(errors.Conflict, match="1 open worker node"):
        await e.manager.create_nodes(caller, c["id"], "worker", "worker", {}, 1)
    await e.manager.terminate_node(caller, c["id"], worker["id"])  # e.g. lost: a replacement is new
    (replacement,) = await e.manager.create_nodes(caller, c["id"], "worker", "worker", {"k": "v"}, 1)
    assert replacement["id"] != worker["id"] and replacement["tags"] == {"k": "v"}
    await e.manager.delete_cluster(e.buyer, c["id"])
    await settle(e.manager)


async def test_an_autoscaler_that_asks_before_it_lists_gets_the_workers_opened_ahead(env, clock):
    """Its create waits for the opening ahead and answers with those workers, tagged as it asked: no
    machine is reserved twice and no worker opened twice."""

    e = await env()
    c, caller, _ = await _head_only(e, clock, ClusterSpec(num_workers=2, duration_s=600))
    tags = {"ray-node-type": "worker", "ray-launch-config": "abc"}
    created = await e.manager.create_nodes(caller, c["id"], "worker", "worker", tags, 2)
    assert len(created) == 2 and all(n["status"] == "open" and n["tags"] == tags for n in created)
    opens = [p["lease_id"] for _, kind, p in e.registry.sent if kind == protocol.LEASE_OPEN]
    assert len(opens) == len(set(opens)) == 3
    assert len((await e.manager.get_cluster(e.buyer, c["id"]))["nodes"]) == 3
    await e.manager.delete_cluster(e.buyer, c["id"])
    await settle(e.manager)


async def test_a_worker_that_fails_to_open_ahead_is_left_to_the_autoscaler(env, clock):
    """The opening ahead tries other machines as any open does; when none could open it, the autoscaler
    lists one worker short and its own request reserves and opens one."""

    e = await env()
    agent_send, refusing = e.registry.answer, [True]

    async def workers_refused(machine_id, kind, payload, timeout_s):
        if kind == protocol.LEASE_OPEN and payload["role"] == "worker" and refusing[0]:
            e.registry.sent.append((machine_id, kind, payload))
            return {"ok": False, "exit_code": 1, "output": "no sandbox", "data": {}}
        return await agent_send(machine_id, kind, payload, timeout_s)

    e.registry.answer = workers_refused
    c, caller, _ = await _head_only(e, clock, ClusterSpec(num_workers=1, duration_s=600))

    async def settled():
        return not e.manager.workers_opening_ahead()

    await waiting.wait_until(settled, timeout_s=5, interval_s=0.01, what="no worker opening ahead")
    nodes = await e.manager.list_nodes(caller, c["id"])
    assert [n["role"] for n in nodes if n["status"] == "open"] == ["head"]
    assert {n["status"] for n in nodes if n["role"] == "worker"} == {"lost"}
    refusing[0] = False
    (worker,) = await e.manager.create_nodes(caller, c["id"], "worker", "worker", {"k": "v"}, 1)
    assert worker["status"] == "open" and worker["tags"] == {"k": "v"}
    await e.manager.delete_cluster(e.buyer, c["id"])
    await settle(e.manager)
