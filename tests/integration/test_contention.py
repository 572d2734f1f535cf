"""Two buyers at the same moment on a fresh market: both clusters run (issue 9, item 6).

This module's `market` is two freshly started agents, so the first lease opens of each agent run
in parallel threads before anything imported Ray there; keep this test first in its module.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.integration.helpers import Api, wait_for
from tests.integration.test_clusters import events_text, wait_status

pytestmark = pytest.mark.slow


def test_two_buyers_within_a_second_on_a_fresh_market_both_run(market, platform):
    alice, bob = Api.sign_up(platform.url, "buyer"), Api.sign_up(platform.url, "buyer")
    body = {"num_workers": 1, "duration_s": 1800}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda buyer: buyer.post("/v1/clusters", json=body), (alice, bob)))
    # 8 CPUs in all and 2 heads + 2 workers asked: both fit. Short capacity would be a 409 here, never later.
    assert [r.status_code for r in answers] == [202, 202], [r.text for r in answers]
    ids = [r.json()["id"] for r in answers]
    try:
        for buyer, cid in zip((alice, bob), ids, strict=True):
            cluster = wait_status(buyer, cid, "running")
            assert cluster["workers_joined"] == 1, events_text(buyer, cid)
    finally:
        for buyer, cid in zip((alice, bob), ids, strict=True):
            buyer.delete(f"/v1/clusters/{cid}")
        for buyer, cid in zip((alice, bob), ids, strict=True):
            wait_for(
                lambda: buyer.get(f"/v1/clusters/{cid}").json()["status"] in ("terminated", "failed"),
                timeout_s=120,
                what=f"cluster {cid} ended",
            )
