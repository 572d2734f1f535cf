"""Sign-in and sign-up limits per client address and overall (token buckets), on a fake clock."""

from __future__ import annotations

import pytest

from actors.access import throttle
from dcl_core import errors


def make(clock, **overrides) -> throttle.AuthThrottle:
    limits = {
        "login_failures_per_address_per_minute": 30,
        "signups_per_address_per_minute": 30,
        "signups_per_minute": 120,
        "password_hashes_per_minute": 600,
        **overrides,
    }
    return throttle.AuthThrottle(clock=clock, **limits)


def remaining(limit: throttle.Limit, key: str | None) -> int:
    """How many takes the limit allows now; takes them all (a check for the end of a test)."""
    n = 0
    while limit.wait_s(key) == 0:
        limit.take(key)
        n += 1
    return n


def test_a_bucket_allows_its_burst_then_refills_at_its_rate(clock):
    limit = throttle.Limit("sign-ups", 30, clock=clock)
    for _ in range(30):
        assert limit.wait_s("1.2.3.4") == 0
        limit.take("1.2.3.4")
    assert limit.wait_s("1.2.3.4") == pytest.approx(2.0)  # 30 a minute: one every 2 s
    clock.advance(1.0)
    assert limit.wait_s("1.2.3.4") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limit.wait_s("1.2.3.4") == 0
    clock.advance(3600)
    assert remaining(limit, "1.2.3.4") == 30  # an hour's refill is never more than the burst


def test_failed_sign_ins_from_one_address_are_limited_and_others_are_not(clock):
    t = make(clock)
    for _ in range(30):
        t.begin_login("10.0.0.1")  # 30 failures: none succeeded
    with pytest.raises(errors.RateLimited) as hit:
        t.begin_login("10.0.0.1")
    assert hit.value.retry_after_s == 2
    assert "failed sign-ins from 10.0.0.1" in hit.value.message and "30 a minute" in hit.value.message
    t.begin_login("10.0.0.2")
    clock.advance(2.0)
    t.begin_login("10.0.0.1")  # refilled one


def test_successful_sign_ins_give_their_token_back(clock):
    t = make(clock)
    for _ in range(1000):
        t.begin_login("10.0.0.1")
        t.login_succeeded("10.0.0.1")
        clock.advance(0.1)  # 600 hashes a minute is the overall budget
    assert t.login_failures.wait_s("10.0.0.1") == 0  # 1000 sign-ins, none refused, the address's bucket full
    t.begin_login("10.0.0.1")


def test_every_password_check_counts_against_the_overall_hash_budget(clock):
    t = make(clock, password_hashes_per_minute=60)  # burst: a tenth of a minute's budget
    for i in range(10):
        t.begin_login(f"10.0.0.{i}")
        t.login_succeeded(f"10.0.0.{i}")
    with pytest.raises(errors.RateLimited) as hit:
        t.begin_login("10.0.1.1")
    assert "all clients together" in hit.value.message and "password checks" in hit.value.message
    assert hit.value.retry_after_s == 1
    with pytest.raises(errors.RateLimited):
        t.begin_signup("10.0.1.2")  # sign-ups hash too
    clock.advance(1.0)
    t.begin_signup("10.0.1.2")


def test_sign_ups_are_limited_per_address_and_overall(clock):
    t = make(clock, signups_per_address_per_minute=3, signups_per_minute=5)
    for _ in range(3):
        t.begin_signup("10.0.0.1")
    with pytest.raises(errors.RateLimited) as hit:
        t.begin_signup("10.0.0.1")
    assert "sign-ups from 10.0.0.1" in hit.value.message and hit.value.retry_after_s == 20
    t.begin_signup("10.0.0.2")
    t.begin_signup("10.0.0.3")
    with pytest.raises(errors.RateLimited) as hit:
        t.begin_signup("10.0.0.4")
    assert "on this platform" in hit.value.message and hit.value.retry_after_s == 12


def test_a_refused_request_takes_nothing(clock):
    t = make(clock, signups_per_address_per_minute=1, signups_per_minute=1000)
    t.begin_signup("10.0.0.1")
    for _ in range(5):
        with pytest.raises(errors.RateLimited):
            t.begin_signup("10.0.0.1")
    # Only the one sign-up that passed took from the overall limits (1000 sign-ups, 100 password checks).
    assert (remaining(t.signups, None), remaining(t.hashes, None)) == (999, 99)


def test_an_unknown_address_is_limited_like_one_address(clock):
    t = make(clock, signups_per_address_per_minute=1)
    t.begin_signup(None)
    with pytest.raises(errors.RateLimited) as hit:
        t.begin_signup(None)
    assert "unknown address" in hit.value.message


def test_tracked_addresses_stay_bounded(clock, monkeypatch):
    monkeypatch.setattr(throttle, "MAX_TRACKED_KEYS", 100)
    limit = throttle.Limit("failed sign-ins", 30, clock=clock)
    for i in range(1000):
        limit.take(f"10.0.{i // 256}.{i % 256}")
    assert limit.tracked_keys() <= 100
