"""Sign-ups of one username at the same moment, over real HTTP: one account, 409 for every other."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.helpers import Api, unique

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", ["/register", "/v1/accounts"])
def test_concurrent_sign_ups_of_one_username_give_one_201_and_409s(platform, path):
    name = unique("racer")

    def sign_up(i: int) -> int:
        body = {"username": name, "password": f"password-{i:03d}"}
        return httpx.post(platform.url + path, json=body, timeout=60).status_code

    racers = 8  # fewer than the failed sign-ins a username may have a minute: all passwords are tried below
    with ThreadPoolExecutor(max_workers=racers) as pool:
        codes = sorted(pool.map(sign_up, range(racers)))
    assert codes == [201] + [409] * (racers - 1), codes
    winners = [
        i
        for i in range(racers)
        if Api(platform.url).post("/v1/token", data={"username": name, "password": f"password-{i:03d}"}).status_code
        == 200
    ]
    assert len(winners) == 1
