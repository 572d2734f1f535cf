import asyncio
import json
import os
import sqlite3
import stat

import pytest

from actors.access import agent_keys, auth
from actors.db import busy, store
from actors.machines import registry, work_channel
from actors.settings import PlatformSettings
from dcl_core import domain, errors, protocol
from tests.statements import statements_seen

pytestmark = pytest.mark.anyio


@pytest.fixture
def make_registry(tmp_path, clock, closing):
    """Builds a ProviderRegistry over the test's state dir (again: the platform restarted); each one's store
    is closed after the test."""

    def make(**options):
        settings = PlatformSettings(state_dir=tmp_path, heartbeat_interval_s=5.0, bcrypt_rounds=4)
        db = store.Store(settings.db_path)
        closing.push_async_callback(db.close)
        return registry.ProviderRegistry(db, settings, clock=clock, limiter=auth.LoginLimiter(clock=clock), **options)

    return make


@pytest.fixture
async def platform_db(tmp_path):
    """The registries' database as another reader sees it (what was written, not what a registry holds)."""
    db = store.Store(PlatformSettings(state_dir=tmp_path).db_path)
    yield db
    await db.close()


def parked_polls(monkeypatch) -> asyncio.Event:
    """Set once a long poll waits on its machine's work channel (past its caller's checks)."""
    parked, wait = asyncio.Event(), work_channel.WorkChannel.wait

    async def watched(self, machine_id, wait_s):
        if wait_s > 0:
            parked.set()  # the poll runs on into wait() and parks before the test resumes
        return await wait(self, machine_id, wait_s)

    monkeypatch.setattr(work_channel.WorkChannel, "wait", watched)
    return parked


def machine_request(key="mk-00000001", gpus=1, model="NVIDIA T4", price=0.5):
    return {
        "machine_key": key,
        "name": "box",
        "price_per_gpu_hour": price,
        "price_per_cpu_hour": 0.01,
        "spec": {
            "hostname": "h",
            "cpus": 8,
            "memory_mb": 16000,
            "gpus": [{"index": i, "model": model, "memory_mb": 16000} for i in range(gpus)],
        },
    }


async def signed_in(reg, clock, username, role):
    await reg.create_account(username, "password123", role)
    return await principal_of(reg, clock, username, "password123")


async def principal_of(reg, clock, username, password):
    token = (await reg.login(username, password))["access_token"]
    return auth.TokenIssuer(await reg.signing_secret(), clock=clock).verify(token)


async def test_bootstrap_admin_credentials_file(make_registry, platform_db, tmp_path, clock):
    reg = make_registry()
    await reg.start()
    creds = json.loads((tmp_path / "admin_credentials.json").read_text())
    await reg.login(creds["username"], creds["password"])
    await reg.start()  # a restart creates no second admin
    assert await platform_db.count_accounts(domain.Role.ADMIN) == 1
    assert stat.S_IMODE(os.stat(tmp_path / "admin_credentials.json").st_mode) == 0o600


async def test_only_admins_create_admins(make_registry, tmp_path, clock):
    reg = make_registry()
    await reg.start()
    buyer = await signed_in(reg, clock, "buyer1", domain.Role.BUYER)
    with pytest.raises(errors.Forbidden):
        await reg.create_account("evil", "password123", domain.Role.ADMIN, buyer)
    creds = json.loads((tmp_path / "admin_credentials.json").read_text())
    admin = await principal_of(reg, clock, creds["username"], creds["password"])

    assert (await reg.create_account("ops2", "password123", domain.Role.ADMIN, admin))["role"] == "admin"


async def test_machines_heartbeats_offline_and_isolation(make_registry, tmp_path, clock):
    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    p2 = await signed_in(reg, clock, "prov2", domain.Role.PROVIDER)
    buyer = await signed_in(reg, clock, "buyer", domain.Role.BUYER)
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

    assert (await reg.list_offers()) == []


async def test_work_long_poll_wakes_on_push(make_registry, clock, monkeypatch):
    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    m = await reg.register_machine(p1, machine_request())
    assert await reg.next_work(p1, m["id"], 0) == []
    parked = parked_polls(monkeypatch)
    waiter = asyncio.create_task(reg.next_work(p1, m["id"], 10))
    await asyncio.wait_for(parked.wait(), 5)
    item = await reg.push_work(m["id"], "lease", {"x": 1})
    got = await asyncio.wait_for(waiter, 2)

    assert got == [item]


async def test_wrong_passwords_rate_limited(make_registry, tmp_path, clock):
    reg = make_registry()
    await reg.start()
    await reg.create_account("alice", "password123", domain.Role.BUYER)
    for _ in range(10):
        with pytest.raises(errors.Unauthenticated):
            await reg.login("alice", "nope-nope")
    with pytest.raises(errors.RateLimited):
        await reg.login("alice", "password123")


async def test_only_admins_list_accounts_and_never_see_hashes(make_registry, tmp_path, clock):
    reg = make_registry()
    await reg.start()
    buyer = await signed_in(reg, clock, "alice", domain.Role.BUYER)
    admin_creds = json.loads((tmp_path / "admin_credentials.json").read_text())
    admin = await principal_of(reg, clock, admin_creds["username"], admin_creds["password"])
    with pytest.raises(errors.Forbidden):
        await reg.list_accounts(buyer)
    accounts = await reg.list_accounts(admin)
    assert [a["username"] for a in accounts] == ["admin", "alice"]
    assert all(set(a) == {"id", "username", "role", "created_at"} for a in accounts)


async def test_no_machine_is_silent_while_the_platform_could_not_hear(make_registry, tmp_path, clock, monkeypatch):
    """After the registry (re)starts, or while heartbeats cannot be recorded, agents get time to come back
    (their retry backoff) before any machine counts as silent; then the usual rule applies."""

    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
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

    # A heartbeat whose write waits on a locked database.
    writing, unlocked = asyncio.Event(), asyncio.Event()
    record_heartbeats = store.Store.record_heartbeats

    async def locked_write(self, *args, **kwargs):
        writing.set()
        await unlocked.wait()
        return await record_heartbeats(self, *args, **kwargs)

    monkeypatch.setattr(store.Store, "record_heartbeats", locked_write)
    beat = asyncio.create_task(reg.heartbeat(p1, m["id"], {}))
    await asyncio.wait_for(writing.wait(), 5)
    clock.advance(registry.SLOW_BEAT_WRITE_S + 1)
    assert (await reg.lease_liveness())["silence_cutoff"] == 0.0
    unlocked.set()
    await asyncio.wait_for(beat, 5)
    clock.advance(grace - 1)
    assert (await reg.lease_liveness())["silence_cutoff"] == 0.0
    clock.advance(2)
    assert (await reg.lease_liveness())["silence_cutoff"] > 0


async def test_a_heartbeat_on_a_locked_database_is_busy_within_seconds_and_the_next_one_recorded(
    make_registry, tmp_path, clock
):
    """Another process holds SQLite's lock past the store's 30 s and a sign-up's write waits for it: a
    heartbeat neither waits behind that write nor out the lock; it fails busy (503, Retry-After) within
    BEAT_LOCK_WAIT_S, and the first heartbeat after the release is recorded at once."""

    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    m = await reg.register_machine(p1, machine_request())
    loop = asyncio.get_running_loop()
    other = sqlite3.connect(tmp_path / "platform.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with statements_seen("INSERT INTO accounts") as signups:
            waiting = asyncio.create_task(reg.create_account("buyer", "password123", domain.Role.BUYER))
            await signups.reached()
        started = loop.time()  # the sign-up's INSERT is at SQLite, waiting for the lock
        with pytest.raises(busy.DatabaseBusy) as refused:
            await asyncio.wait_for(reg.heartbeat(p1, m["id"], {}), registry.BEAT_LOCK_WAIT_S + 3)
        busy_after_s = loop.time() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(waiting, 5)
    clock.advance(1)
    started = loop.time()
    await asyncio.wait_for(reg.heartbeat(p1, m["id"], {"cpu_percent": 3.0}), 5)
    recorded_after_s = loop.time() - started
    machine = await reg.get_machine(p1, m["id"])
    assert busy.is_busy(refused.value) and busy_after_s <= registry.BEAT_LOCK_WAIT_S + 1, (refused.value, busy_after_s)
    assert recorded_after_s < 1.0 and machine["last_heartbeat"] == 1_000_001.0


# --- per-machine agent keys -------------------------------------------------------------------


async def test_enrollment_answers_a_key_that_speaks_for_its_machine_alone(make_registry, platform_db, clock):
    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    first = await reg.register_machine(p1, machine_request("mk-00000001"))
    second = await reg.register_machine(p1, machine_request("mk-00000002"))
    key = agent_keys.parse(first["agent_key"])
    assert key is not None and key.machine_id == first["id"]
    usage = {"active_leases": 0}
    assert (await reg.heartbeat(key, first["id"], usage))["status"] == "online"
    await reg.push_work(second["id"], "lease.exec", {"x": 1})
    # The first machine's key can neither read nor answer the second machine's work.
    for call in (
        reg.heartbeat(key, second["id"], usage),
        reg.next_work(key, second["id"], 0),
        reg.complete_work(key, second["id"], "w-000000000000", protocol.WorkResult(ok=True)),
        reg.leave(key, second["id"]),
    ):
        with pytest.raises(errors.NotFound):
            await call
    assert len(await reg.next_work(p1, second["id"], 0)) == 1  # still queued for its own agent
    forged = agent_keys.MachineKey(first["id"], "A" * 43)
    with pytest.raises(errors.Unauthenticated):
        await reg.heartbeat(forged, first["id"], usage)
    # The key refreshes its own machine's offer without a new key; it cannot take another machine_key.
    refreshed = await reg.register_machine(key, machine_request("mk-00000001", price=0.9))
    assert refreshed["id"] == first["id"] and refreshed["price_per_gpu_hour"] == 0.9
    assert refreshed.get("agent_key") is None
    with pytest.raises(errors.Forbidden):
        await reg.register_machine(key, machine_request("mk-00000002"))
    # The database keeps only a hash of the secret.
    row = await platform_db.active_machine_key(first["id"])
    assert key.secret not in json.dumps(row) and row["key_hash"] == agent_keys.hash_secret(key.secret)


async def test_revoked_or_replaced_keys_get_401_and_only_the_owner_revokes(make_registry, clock, monkeypatch):
    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    p2 = await signed_in(reg, clock, "prov2", domain.Role.PROVIDER)
    enrolled = await reg.register_machine(p1, machine_request())
    machine_id, key = enrolled["id"], agent_keys.parse(enrolled["agent_key"])
    [listed] = await reg.list_machine_keys(p1)
    assert listed["machine_id"] == machine_id and listed["active"] and "key_hash" not in listed
    assert await reg.list_machine_keys(p2) == []
    with pytest.raises(errors.NotFound):
        await reg.revoke_machine_key(p2, listed["id"])
    parked = parked_polls(monkeypatch)
    poll = asyncio.ensure_future(reg.next_work(key, machine_id, 20))
    await asyncio.wait_for(parked.wait(), 5)
    revoked = await reg.revoke_machine_key(p1, listed["id"])
    assert not revoked["active"] and revoked["revoked_at"] is not None
    assert await asyncio.wait_for(poll, 1) == []  # the poll in flight returns at once
    for call in (reg.heartbeat(key, machine_id, {"active_leases": 0}), reg.next_work(key, machine_id, 0)):
        with pytest.raises(errors.Unauthenticated, match="revoked"):
            await call
    assert (await reg.get_machine(p1, machine_id))["status"] == "offline"  # no new leases meanwhile
    assert (await reg.revoke_machine_key(p1, listed["id"]))["revoked_at"] == revoked["revoked_at"]  # idempotent
    # Enrolling again with the password gives a new key; an earlier key stays dead, after a restart too.
    again = await reg.register_machine(p1, machine_request())
    assert again["id"] == machine_id
    restarted = make_registry()
    await restarted.start()
    with pytest.raises(errors.Unauthenticated):
        await restarted.heartbeat(key, machine_id, {"active_leases": 0})
    fresh = agent_keys.parse(again["agent_key"])
    assert (await restarted.heartbeat(fresh, machine_id, {"active_leases": 0}))["status"] == "online"
    assert [k["active"] for k in await restarted.list_machine_keys(p1)] == [False, True]


async def test_heartbeats_accrue_uptime_and_machines_and_offers_show_reliability(make_registry, platform_db, clock):
    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    m = await reg.register_machine(p1, machine_request())
    assert m["reliability"] == 0.9  # the prior
    for _ in range(10):
        await reg.heartbeat(p1, m["id"], {"active_leases": 0})
        clock.advance(5)
    clock.advance(3600)  # an hour of silence: not online time
    await reg.heartbeat(p1, m["id"], {"active_leases": 0})
    row = await platform_db.get_machine(m["id"])
    assert row["online_seconds"] == 45  # nine 5 s gaps; the hour-long one does not count
    got = await reg.get_machine(p1, m["id"])
    assert 0 < got["reliability"] < 0.9  # an hour off in its first hour and a bit
    [offer] = await reg.list_offers()
    assert offer["reliability_min"] == offer["reliability_max"] == got["reliability"]


async def test_a_batch_of_heartbeats_answers_each_its_own_and_records_the_good_ones(make_registry, tmp_path, clock):
    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    p2 = await signed_in(reg, clock, "prov2", domain.Role.PROVIDER)
    first = await reg.register_machine(p1, machine_request("mk-00000001"))
    second = await reg.register_machine(p1, machine_request("mk-00000002"))
    key = agent_keys.parse(first["agent_key"])
    forged = agent_keys.MachineKey(second["id"], "A" * 43)
    clock.advance(3)
    answers = await reg.heartbeats(
        [
            (key, first["id"], {"cpu_percent": 7.0}, ["l-000000000001"]),
            (p2, second["id"], {}, []),  # another provider's machine
            (forged, second["id"], {}, []),  # a key that is not the machine's
            (p1, second["id"], {}, []),
            (p1, "m-ffffffffffff", {}, []),
        ]
    )
    machines = {m["id"]: m for m in await reg.list_machines(p1)}

    assert answers[0] == {"status": "online", "heartbeat_interval_s": 5.0, "stale_leases": ["l-000000000001"]}
    assert isinstance(answers[1], errors.NotFound) and isinstance(answers[2], errors.Unauthenticated)
    assert answers[3]["status"] == "online" and isinstance(answers[4], errors.NotFound)
    assert machines[first["id"]]["usage"]["cpu_percent"] == 7.0
    assert machines[first["id"]]["last_heartbeat"] == machines[second["id"]]["last_heartbeat"]  # one write


async def test_lease_liveness_answers_for_the_machines_asked_about(make_registry, clock):
    reg = make_registry()
    await reg.start()
    p1 = await signed_in(reg, clock, "prov1", domain.Role.PROVIDER)
    first = await reg.register_machine(p1, machine_request("mk-00000001"))
    second = await reg.register_machine(p1, machine_request("mk-00000002"))
    await reg.heartbeats([(p1, first["id"], {}, ["l-000000000001"]), (p1, second["id"], {}, [])])

    asked = await reg.lease_liveness([first["id"], "m-ffffffffffff"])  # one never heard from
    everyone = await reg.lease_liveness()

    assert asked["held"] == {first["id"]: {"at": clock(), "leases": ["l-000000000001"]}}
    assert set(everyone["held"]) == {first["id"], second["id"]}
    assert (await reg.lease_liveness([]))["held"] == {}
    assert asked["silence_cutoff"] == everyone["silence_cutoff"]
