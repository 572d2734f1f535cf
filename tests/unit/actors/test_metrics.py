"""What the control plane measures: each plain class reports to its injected Metrics, and the API times routes."""

from __future__ import annotations

import inspect

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from actors import metrics
from actors.settings import PlatformSettings
from dcl_core import domain, errors
from dcl_core.cluster_spec import ClusterSpec
from serve_app import api_metrics
from tests.unit.actors.clusters import test_cluster_manager as cm_tests
from tests.unit.actors.clusters import test_expiry_reaper as reaper_tests
from tests.unit.actors.clusters.test_cluster_manager import env  # noqa: F401 (the fixture)
from tests.unit.actors.clusters.test_expiry_reaper import cluster_db  # noqa: F401 (the fixture)
from tests.unit.actors.machines import test_registry as registry_tests
from tests.unit.actors.machines.test_registry import make_registry, platform_db  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio


class RecordingMetrics:
    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def cluster_states(self, counts):
        self.calls.append(("cluster_states", dict(counts)))

    def provisioned(self, seconds):
        self.calls.append(("provisioned", seconds))

    def released(self, seconds):
        self.calls.append(("released", seconds))

    def expiry_lateness(self, seconds):
        self.calls.append(("expiry_lateness", seconds))

    def machines_online(self, by_gpu_model):
        self.calls.append(("machines_online", dict(by_gpu_model)))

    def sign_in_failed(self, *, throttled):
        self.calls.append(("sign_in_failed", throttled))

    def of(self, name):
        return [value for n, value in self.calls if n == name]


def _methods(cls) -> dict:
    return {n: inspect.signature(f) for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_fakes_and_the_null_metrics_keep_to_the_protocol():
    from actors import ray_metrics

    protocol = _methods(metrics.Metrics)
    for cls in (metrics.NullMetrics, ray_metrics.RayMetrics):
        assert {n: s for n, s in _methods(cls).items() if n in protocol} == protocol, cls
    assert set(protocol) <= set(_methods(RecordingMetrics))


async def test_registry_counts_refused_sign_ins_and_throttles(make_registry, clock):
    recorded = RecordingMetrics()

    reg = make_registry(metrics=recorded)
    await reg.start()
    await reg.create_account("alice", "password123", domain.Role.BUYER)
    for _ in range(10):
        try:
            await reg.login("alice", "nope-nope")
        except errors.Unauthenticated:
            pass
    try:
        await reg.login("alice", "password123")
    except errors.RateLimited:
        pass
    assert recorded.of("sign_in_failed") == [False] * 10 + [True]


async def test_manager_reports_states_provisioning_and_release(env, clock):
    recorded = RecordingMetrics()

    e = await env(metrics=recorded)
    manager, registry, launcher, buyer, db = e
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    clock.advance(12)
    await cm_tests.settle(manager)
    await manager.reconcile_once()
    assert recorded.of("provisioned") == [12]
    assert recorded.of("cluster_states")[-1] == {"running": 1}
    await manager.delete_cluster(buyer, c["id"])
    await cm_tests.settle(manager)
    await manager.reconcile_once()
    assert recorded.of("released") == [0]
    assert recorded.of("cluster_states")[-1] == {"terminated": 1}


async def test_reaper_reports_how_late_an_expiry_fired(cluster_db, clock):
    recorded = RecordingMetrics()

    clusters, reaper = await reaper_tests.make(cluster_db, clock, n=1, metrics=recorded)
    clock.advance(100.25)
    assert await reaper.fire_due() == ["c-000000000000"]
    assert recorded.of("expiry_lateness") == [0.25]


def test_api_latency_is_recorded_under_the_route_template_never_the_raw_path():
    seen = []
    app = FastAPI()

    @app.get("/v1/clusters/{cluster_id}")
    async def get(cluster_id: str):
        return {"id": cluster_id}

    app.add_middleware(api_metrics.ApiLatency, recorder_factory=lambda: lambda *args: seen.append(args))
    client = TestClient(app)
    assert client.get("/v1/clusters/c-0123456789ab").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert [(r, m, s) for r, m, s, _ in seen] == [("/v1/clusters/{cluster_id}", "GET", 200), ("unmatched", "GET", 404)]
    assert all(0 <= t < 5 for *_, t in seen)


def test_outside_ray_the_api_records_nothing(monkeypatch):
    from ray.util import metrics as ray_util_metrics

    made = []
    monkeypatch.setattr(ray_util_metrics, "Histogram", lambda *args, **kwargs: made.append(args))
    record = api_metrics.ray_recorder()
    assert record("/x", "GET", 200, 0.1) is None  # no Ray here (unit tests): a no-op, never an error
    assert made == []  # no histogram made, nothing observed


def test_the_grafana_dashboard_queries_exactly_the_metrics_the_platform_exports():
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    source = (root / "actors/ray_metrics.py").read_text() + (root / "serve_app/api_metrics.py").read_text()
    defined = set(re.findall(r'"(dcluster_[a-z_]+)"', source))
    dashboard = json.loads((root / "platform/grafana-dashboard.json").read_text())
    queried = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_(dcluster_[a-z_]+)", target["expr"])
    }
    assert queried == defined


async def test_the_machines_online_gauge_counts_what_the_offers_show(make_registry, platform_db, tmp_path, clock):
    """The sweeper's gauge is counted by the database (the offers view reads every row: 130 ms at 10,000
    machines, a stall of every heartbeat); both count the same machines."""

    reg = make_registry()
    await reg.start()
    p1 = await registry_tests.signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    request = registry_tests.machine_request
    for i, (gpus, model) in enumerate([(1, "NVIDIA T4"), (2, "NVIDIA T4"), (0, "NVIDIA T4"), (1, "NVIDIA L4")]):
        await reg.register_machine(p1, request(key=f"mk-0000000{i}", gpus=gpus, model=model))
    silent = await reg.register_machine(p1, request(key="mk-00000009", gpus=1, model="NVIDIA L4"))
    clock.advance(16)  # every machine's last beat is now too old ...
    for m in await reg.list_machines(p1):
        if m["id"] != silent["id"]:  # ... but the silent one's beat again
            await reg.heartbeat(p1, m["id"], {})
    settings = PlatformSettings(state_dir=tmp_path, heartbeat_interval_s=5.0)  # make_registry's
    counted = await platform_db.count_online_by_gpu_model(settings.online_cutoff(clock()))
    offered: dict = {}
    for offer in await reg.list_offers():
        offered[offer["gpu_model"]] = offered.get(offer["gpu_model"], 0) + offer["machines"]

    assert counted == offered == {"NVIDIA T4": 2, None: 1, "NVIDIA L4": 1}
