"""The whole platform stopped and started again under running clusters: `dcluster down` then `up`, and the
platform unreachable for 60 s. A platform of its own (the session's one stays up for the other faults)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import RunningPlatform, running_platform
from tests.integration.faults import faultkit
from tests.integration.faults.conftest import create_cluster, events_text, start_market, wait_status
from tests.integration.helpers import Api, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

OUTAGE_S = 60.0


@pytest.fixture(scope="module")
def own_platform():
    with running_platform("dcl-flt-") as running:
        yield running


@pytest.fixture(scope="module")
def own_market(own_platform):
    """Agents outside the platform's own processes: `down` stops the platform, not the providers' machines."""
    return start_market(own_platform)


def two_running_clusters(buyer: Api) -> list[str]:
    ids = []
    for _ in range(2):  # one after the other: two lease opens at once on a fresh agent fail (issue 9, item 6)
        ids.append(create_cluster(buyer))
        wait_status(buyer, ids[-1], "running", timeout_s=300)
    return ids


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def survived(platform: RunningPlatform, buyer: Api, ids: list[str]) -> dict[str, dict]:
    """Each cluster known, and running with live nodes or ended with a reason; then deleted cleanly."""
    wait_for(lambda: healthy(platform.url), timeout_s=120, what="/healthz 200")
    admin = platform.admin()
    clusters = faultkit.check_clusters(admin, platform.state_dir, ids)
    faultkit.check_running_nodes_alive(platform.state_dir, clusters)
    canary = create_cluster(buyer, duration_s=60)
    for cid in ids:
        assert buyer.delete(f"/v1/clusters/{cid}").status_code == 200
    for cid in ids:
        wait_status(buyer, cid, *faultkit.TERMINAL, timeout_s=180)
    wait_status(buyer, canary, *faultkit.TERMINAL, timeout_s=180)
    lateness = faultkit.expiry_lateness(buyer, canary)
    assert 0 <= lateness <= faultkit.EXPIRY_TOLERANCE_S
    faultkit.check_all(platform, buyer, [*ids, canary])
    return clusters


def relogin(platform: RunningPlatform, buyer: Api) -> Api:
    r = Api(platform.url).post("/v1/token", data={"username": buyer.username, "password": buyer.password})
    assert r.status_code == 200, r.text
    again = Api(platform.url, r.json()["access_token"])
    again.username, again.password = buyer.username, buyer.password
    return again


def test_down_then_up_with_two_clusters_running(own_platform, own_market):
    buyer = Api.sign_up(own_platform.url, "buyer")
    ids = two_running_clusters(buyer)
    stopped = own_platform.launcher.down()
    assert stopped["stopped"] and own_platform.owned_processes() == []
    own_platform.launcher.up()
    clusters = survived(own_platform, relogin(own_platform, buyer), ids)
    print("\ndown/up: " + "; ".join(f"{cid} {c['status']} {c['reason'] or ''}" for cid, c in clusters.items()))
    for cid in ids:
        assert clusters[cid]["status"] == "running", events_text(buyer, cid)


def test_platform_unreachable_for_60_s(own_platform, own_market):
    buyer = Api.sign_up(own_platform.url, "buyer")
    ids = two_running_clusters(buyer)
    down_at = time.time()
    own_platform.launcher.down()
    wait_for(lambda: time.time() - down_at >= OUTAGE_S, timeout_s=OUTAGE_S + 5, interval_s=1, what="the outage")
    for m in own_market:  # the agents carried on through the outage
        assert m["agent"].proc.poll() is None, m["agent"].log_text()[-2000:]
    own_platform.launcher.up()
    back_at = time.time()
    clusters = survived(own_platform, relogin(own_platform, buyer), ids)
    print(
        f"\nunreachable {back_at - down_at:.0f} s: "
        + "; ".join(f"{cid} {c['status']} {c['reason'] or ''}" for cid, c in clusters.items())
    )
    for cid in ids:
        assert clusters[cid]["status"] == "running", events_text(buyer, cid)
