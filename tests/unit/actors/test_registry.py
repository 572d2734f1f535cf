import asyncio
import json
import os
import stat

import pytest

from actors import auth, registry, store
from dcl_core import domain, errors, protocol
from actors.settings import PlatformSettings


_OPEN: list = []  # the registries' stores, closed after each test
_CLOCKS: dict = {}  # registry → its clock


def make_registry(tmp_path, clock, **options):
    settings = PlatformSettings(state_dir=tmp_path, heartbeat_interval_s=5.0, bcrypt_rounds=4)
    db = store.Store(settings.db_path)
    reg = registry.ProviderRegistry(db, settings, clock=clock, limiter=auth.LoginLimiter(clock=clock), **options)
    _OPEN.append(db)
    _CLOCKS[id(reg)] = clock
    return reg


def run(go):
    """Runs the test's coroutine, then closes its registries' databases on the same loop."""
    async def wrapped():
        try:
            return await go()
        finally:
            while _OPEN:
                await _OPEN.pop().close()
    return asyncio.run(wrapped())


def machine_request(key="mk-00000001", gpus=1, model="NVIDIA T4", price=0.5):
    return {"machine_key": key, "name": "box", "price_per_gpu_hour": price, "price_per_cpu_hour": 0.01,
            "spec": {"hostname": "h", "cpus": 8, "memory_mb": 16000,
                     "gpus": [{"index": i, "model": model, "memory_mb": 16000} for i in range(gpus)]}}


async def signed_in(reg, username, role):
    await reg.create_account(username, "password123", role)
    return await principal_of(reg, username, "password123")


async def principal_of(reg, username, password):
    token = (await reg.login(username, password))["access_token"]
    return auth.TokenIssuer(await reg.signing_secret(), clock=_CLOCKS[id(reg)]).verify(token)


def test_bootstrap_admin_credentials_file(tmp_path, clock):
    async def go():
        reg = make_registry(tmp_path, clock)
        await reg.start()
        creds = json.loads((tmp_path / "admin_credentials.json").read_text())
        await reg.login(creds["username"], creds["password"])
        await reg.start()  # a restart creates no second admin
        return await _OPEN[-1].count_accounts(domain.Role.ADMIN)
    assert run(go) == 1
    assert stat.S_IMODE(os.stat(tmp_path / "admin_credentials.json").st_mode) == 0o600


def test_only_admins_create_admins(tmp_path, clock):
    async def go():
        reg = make_registry(tmp_path, clock)
        await reg.start()
        buyer = await signed_in(reg, "buyer1", domain.Role.BUYER)
        with pytest.raises(errors.Forbidden):
            await reg.create_account("evil", "password123", domain.Role.ADMIN, buyer)
        creds = json.loads((tmp_path / "admin_credentials.json").read_text())
        admin = await principal_of(reg, creds["username"], creds["password"])
        return await reg.create_account("ops2", "password123", domain.Role.ADMIN, admin)
    assert run(go)["role"] == "admin"


def test_machines_heartbeats_offline_and_isolation(tmp_path, clock):
    async def go():
        reg = make_registry(tmp_path, clock)
        await reg.start()
        p1 = await signed_in(reg, "prov1", domain.Role.PROVIDER)
        p2 = await signed_in(reg, "prov2", domain.Role.PROVIDER)
        buyer = await signed_in(reg, "buyer", domain.Role.BUYER)
        m = await reg.register_machine(p1, machine_request())
        assert m["status"] == "online" and m["heartbeat_interval_s"] == 5.0
        # The same key again is the same machine.
        assert (await reg.register_machine(p1, machine_request()))["id"] == m["id"]
        with pytest.raises(errors.NotFound):
            await reg.heartbeat(p2, m["id"], {})
        with pytest.raises(errors.Forbidden):
            await reg.register_machine(buyer, machine_request())
        assert await reg.list_machines(p2) == []
        clock.advance(16)  # > 3 missed beats of 5 s
        assert (await reg.get_machine(p1, m["id"]))["status"] == "offline"
        assert await reg.list_offers() == []
        await reg.heartbeat(p1, m["id"], {"cpu_percent": 12.5})
        assert (await reg.get_machine(p1, m["id"]))["status"] == "online"
        assert (await reg.list_offers())[0]["gpus"] == 1
        await reg.leave(p1, m["id"])
        with pytest.raises(errors.NotFound, match="register it again"):
            await reg.heartbeat(p1, m["id"], {})
        return await reg.list_offers()
    assert run(go) == []


def test_work_long_poll_wakes_on_push(tmp_path, clock):
    async def go():
        reg = make_registry(tmp_path, clock)
        await reg.start()
        p1 = await signed_in(reg, "prov1", domain.Role.PROVIDER)
        m = await reg.register_machine(p1, machine_request())
        assert await reg.next_work(p1, m["id"], 0) == []
        waiter = asyncio.create_task(reg.next_work(p1, m["id"], 10))
        await asyncio.sleep(0.05)
        item = await reg.push_work(m["id"], "lease", {"x": 1})
        got = await asyncio.wait_for(waiter, 2)
        return item, got
    item, got = run(go)
    assert got == [item]


def test_wrong_passwords_rate_limited(tmp_path, clock):
    async def go():
        reg = make_registry(tmp_path, clock)
        await reg.start()
        await reg.create_account("alice", "password123", domain.Role.BUYER)
        for _ in range(10):
            with pytest.raises(errors.Unauthenticated):
                await reg.login("alice", "nope-nope")
        with pytest.raises(errors.RateLimited):
            await reg.login("alice", "password123")
    run(go)


def test_only_admins_list_accounts_and_never_see_hashes(tmp_path, clock):
    async def go():
        reg = make_registry(tmp_path, clock)
        await reg.start()
        buyer = await signed_in(reg, "alice", domain.Role.BUYER)
        admin_creds = json.loads((tmp_path / "admin_credentials.json").read_text())
        admin = await principal_of(reg, admin_creds["username"], admin_creds["password"])
        with pytest.raises(errors.Forbidden):
            await reg.list_accounts(buyer)
        accounts = await reg.list_accounts(admin)
        assert [a["username"] for a in accounts] == ["admin", "alice"]
        assert all(set(a) == {"id", "username", "role", "created_at"} for a in accounts)
    run(go)


def test_no_machine_is_silent_while_the_platform_could_not_hear(tmp_path, clock):
    """After the registry (re)starts, or while heartbeats cannot be recorded, agents get time to come back
    (their retry backoff) before any machine counts as silent; then the usual rule applies."""
    async def go():
        reg = make_registry(tmp_path, clock)
        await reg.start()
        p1 = await signed_in(reg, "prov1", domain.Role.PROVIDER)
        m = await reg.register_machine(p1, machine_request())
        await reg.heartbeat(p1, m["id"], {}, ["l-000000000001"])
        offline_after_s = PlatformSettings(state_dir=tmp_path, heartbeat_interval_s=5.0).offline_after_s
        grace = offline_after_s + protocol.AGENT_MAX_RETRY_S
        clock.advance(grace - 1)  # e.g. the platform was down: the machine's last beat is old
        assert (await reg.lease_liveness())["silence_cutoff"] == 0.0
        clock.advance(2)
        liveness = await reg.lease_liveness()
        assert liveness["silence_cutoff"] == clock() - offline_after_s
        assert liveness["held"][m["id"]]["leases"] == ["l-000000000001"]

        reg._beats_in_flight[object()] = clock()  # a heartbeat waiting on a locked database
        clock.advance(registry.SLOW_BEAT_WRITE_S + 1)
        assert (await reg.lease_liveness())["silence_cutoff"] == 0.0
        reg._beats_in_flight.clear()
        clock.advance(grace - 1)
        assert (await reg.lease_liveness())["silence_cutoff"] == 0.0
        clock.advance(2)
        assert (await reg.lease_liveness())["silence_cutoff"] > 0
    run(go)
