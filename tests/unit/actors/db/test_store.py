import asyncio
import contextlib
import json
import os
import sqlite3
import stat

import pytest
import sqlalchemy as sa

from actors.db import busy, migrate, schema, store
from dcl_core import domain, errors
from tests.statements import statements_seen
from tests.waiting import wait_until


def run(coro):
    return asyncio.run(coro)


def spec(gpus=0, model="NVIDIA T4"):
    return domain.MachineSpec(
        hostname="h",
        cpus=8,
        memory_mb=16000,
        gpus=[domain.GpuInfo(index=i, model=model, memory_mb=16000) for i in range(gpus)],
    )


def test_migrations_set_one_schema_version_on_both_backends(db_location):
    async def go():
        s = store.Store(db_location)
        assert await s.schema_version() == migrate.as_version(migrate.head_revision())
        await s.close()
        # Re-opening runs no migration twice; opening concurrently migrates once.
        again = [store.Store(db_location) for _ in range(4)]
        versions = await asyncio.gather(*(a.schema_version() for a in again))
        for a in again:
            await a.close()
        return versions

    assert run(go()) == [migrate.as_version(migrate.head_revision())] * 4


def test_migrations_set_schema_version_and_wal(tmp_path):
    async def go():
        s = store.Store(tmp_path / "p.db")
        assert await s.schema_version() == migrate.as_version(migrate.head_revision())
        mode = (await s.fetch_column(sa.text("PRAGMA journal_mode")))[0]
        await s.close()
        # Re-opening runs no migration twice.
        s2 = store.Store(tmp_path / "p.db")
        assert await s2.schema_version() == migrate.as_version(migrate.head_revision())
        await s2.close()
        return mode

    assert run(go()) == "wal"
    assert stat.S_IMODE(os.stat(tmp_path / "p.db").st_mode) == 0o600


def test_duplicate_username_is_a_conflict_and_keeps_the_first(db_location):
    async def go():
        s = store.Store(db_location)
        first = await s.create_account("alice", "h1", domain.Role.BUYER, 1.0)
        with pytest.raises(errors.Conflict):
            await s.create_account("alice", "h2", domain.Role.ADMIN, 2.0)
        again = await s.get_account_by_username("alice")
        await s.close()
        return first, again

    first, again = run(go())
    assert again == first and again["password_hash"] == "h1"


def test_machine_upsert_is_idempotent_per_key_and_survives_reopen(db_location):
    async def go():
        s = store.Store(db_location)
        acct = await s.create_account("prov", "h", domain.Role.PROVIDER, 1.0)
        a = await s.upsert_machine(
            machine_id="m-aaaaaaaaaaaa",
            provider_id=acct["id"],
            machine_key="key-00001",
            name="one",
            spec=spec(2),
            price_per_gpu_hour=1.0,
            price_per_cpu_hour=0.0,
            now=5.0,
        )
        b = await s.upsert_machine(
            machine_id="m-bbbbbbbbbbbb",
            provider_id=acct["id"],
            machine_key="key-00001",
            name="renamed",
            spec=spec(4),
            price_per_gpu_hour=2.0,
            price_per_cpu_hour=0.0,
            now=6.0,
        )
        await s.close()
        s = store.Store(db_location)
        rows = await s.list_machines(acct["id"])
        await s.close()
        return a, b, rows

    a, b, rows = run(go())
    assert a["id"] == b["id"] == "m-aaaaaaaaaaaa"
    assert len(rows) == 1 and rows[0]["name"] == "renamed" and rows[0]["gpus"] == 4


def test_silent_machines_go_offline(db_location):
    async def go():
        s = store.Store(db_location)
        acct = await s.create_account("prov", "h", domain.Role.PROVIDER, 1.0)
        for i, now in enumerate([10.0, 20.0]):
            await s.upsert_machine(
                machine_id=f"m-00000000000{i}",
                provider_id=acct["id"],
                machine_key=f"key-0000{i}",
                name=f"n{i}",
                spec=spec(),
                price_per_gpu_hour=0,
                price_per_cpu_hour=0,
                now=now,
            )
        gone = await s.mark_silent_machines_offline(cutoff=15.0)
        online = await s.list_machines_by_status(domain.MachineStatus.ONLINE)
        await s.close()
        return gone, [r["id"] for r in online]

    gone, online = run(go())
    assert gone == ["m-000000000000"] and online == ["m-000000000001"]


def test_a_version_2_database_migrates_to_quotas_and_keeps_its_data(db_location):
    async def go():
        old = store.Store(db_location, revision="0002")
        assert await old.schema_version() == 2
        await old.insert_rows(
            schema.accounts, [{"username": "old", "password_hash": "h", "role": "buyer", "created_at": 1}]
        )
        await old.close()
        s = store.Store(db_location)
        assert await s.schema_version() == migrate.as_version(migrate.head_revision()) >= 3
        assert (await s.get_account_by_username("old"))["role"] == "buyer"
        rows = await s.fetch_all(sa.select(schema.account_quotas))
        await s.close()
        return rows

    assert run(go()) == []


def test_a_cancelled_write_never_leaves_the_write_lock_held(tmp_path):
    """A caller cancelled half-way through a write (an HTTP client that hung up) must not leave a
    transaction open: it would hold SQLite's write lock and stall every other writer (heartbeats)."""
    import sqlite3

    async def go():
        s = store.Store(tmp_path / "p.db")
        await s.open()
        task = asyncio.create_task(s.create_account("alice", "h", domain.Role.BUYER, 1.0))
        await asyncio.sleep(0)  # the INSERT is on its way to the writer's thread, not finished yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def committed():  # the shielded write finishes on its own
            return await s.fetch_all(sa.select(schema.accounts.c.username))

        await wait_until(committed, timeout_s=10, interval_s=0.01, what="alice's cancelled write committed")
        try:
            other = sqlite3.connect(tmp_path / "p.db", timeout=0.5)
            try:  # another process's writer gets the lock: no transaction was left open
                other.execute(
                    "INSERT INTO accounts (username, password_hash, role, created_at) VALUES ('bob', 'h', 'buyer', 1)"
                )
                other.commit()
            finally:
                other.close()
            names = {r["username"] for r in await s.fetch_all(sa.select(schema.accounts.c.username))}
        finally:
            await s.close()
        return names

    assert run(go()) == {"alice", "bob"}


def test_a_cancelled_write_commits_whole_and_blocks_no_other_writer(db_location):
    """On both backends: the cancelled caller's transaction finishes on its own, and a writer from
    another process (another store) is not held up by it."""

    async def go():
        s = store.Store(db_location)
        await s.open()
        task = asyncio.create_task(s.create_account("alice", "h", domain.Role.BUYER, 1.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        other = store.Store(db_location)

        async def both():  # the shielded write finishes on its own
            names = {r["username"] for r in await s.fetch_all(sa.select(schema.accounts.c.username))}
            return names if names == {"alice", "bob"} else None

        try:
            await asyncio.wait_for(other.create_account("bob", "h", domain.Role.BUYER, 1.0), 10)
            names = await wait_until(both, timeout_s=10, interval_s=0.01, what="alice's and bob's accounts")
        finally:
            await other.close()
            await s.close()
        return names

    assert run(go()) == {"alice", "bob"}


# --- a database locked by another process -----------------------------------------------------


@contextlib.contextmanager
def locked_by_another_process(path):
    """SQLite's write lock held by another connection (as another process would), released after."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_reads_answer_while_a_write_waits_for_another_process_lock(tmp_path):
    """A write waiting out SQLite's lock must not hold up reads (every GET, every heartbeat's own
    lookup): they used to queue behind it on the one connection for the whole 30 s."""

    async def go():
        s = store.Store(tmp_path / "p.db")
        await s.create_account("alice", "h", domain.Role.BUYER, 1.0)
        with locked_by_another_process(tmp_path / "p.db"), statements_seen("INSERT INTO accounts") as inserts:
            blocked = asyncio.create_task(s.create_account("bob", "h", domain.Role.BUYER, 1.0))
            await inserts.reached()  # bob's INSERT is at SQLite, waiting for the lock
            loop = asyncio.get_running_loop()
            started = loop.time()
            alice = await asyncio.wait_for(s.get_account_by_username("alice"), 5)
            read_s = loop.time() - started
            assert not blocked.done()
        bob = await asyncio.wait_for(blocked, 5)  # released: the waiting write goes through
        await s.close()
        return alice["username"], read_s, bob["username"]

    alice, read_s, bob = run(go())
    assert (alice, bob) == ("alice", "bob") and read_s < 1.0


def test_a_write_gives_up_busy_after_its_lock_wait_even_behind_another_write(tmp_path):
    """A heartbeat's write waits lock_wait_s in all, queued behind this process's earlier writes
    included, then fails busy (503 + Retry-After); once the lock is gone the next one goes through."""

    async def go():
        s = store.Store(tmp_path / "p.db")
        account = await s.create_account("prov", "h", domain.Role.PROVIDER, 1.0)
        await s.upsert_machine(
            machine_id="m-000000000001",
            provider_id=account["id"],
            machine_key="mk-1",
            name="box",
            spec=spec(),
            price_per_gpu_hour=0.5,
            price_per_cpu_hour=0.01,
            now=1.0,
        )
        usage = domain.MachineUsage()
        loop = asyncio.get_running_loop()
        with locked_by_another_process(tmp_path / "p.db"), statements_seen("INSERT INTO accounts") as inserts:
            earlier = asyncio.create_task(s.create_account("bob", "h", domain.Role.BUYER, 1.0))  # waits up to 30 s
            await inserts.reached()  # it holds this process's write turn, waiting for SQLite's lock
            started = loop.time()
            with pytest.raises(busy.DatabaseBusy) as refused:
                await s.record_heartbeat("m-000000000001", 2.0, usage, lock_wait_s=0.5)
            gave_up_s = loop.time() - started
        await asyncio.wait_for(earlier, 5)
        started = loop.time()
        await s.record_heartbeat("m-000000000001", 3.0, usage, lock_wait_s=0.5)
        recorded_s = loop.time() - started
        machine = await s.get_machine("m-000000000001")
        await s.close()
        return refused.value, gave_up_s, recorded_s, machine["last_heartbeat"]

    refused, gave_up_s, recorded_s, last = run(go())
    assert busy.is_busy(refused) and 0.4 <= gave_up_s < 1.5, (refused, gave_up_s)
    assert recorded_s < 0.5 and last == 3.0


def test_a_write_waits_out_a_short_lock_and_succeeds(tmp_path):
    """Under its lock wait, a lock another process holds for a moment only delays a write."""

    async def go():
        s = store.Store(tmp_path / "p.db")
        await s.open()
        with locked_by_another_process(tmp_path / "p.db"), statements_seen("INSERT INTO accounts") as inserts:
            write = asyncio.create_task(s.create_account("alice", "h", domain.Role.BUYER, 1.0))
            await inserts.reached(times=3)  # two of SQLite's busy polls failed meanwhile, and it tries again
            assert not write.done()
        account = await asyncio.wait_for(write, 5)
        await s.close()
        return account["username"]

    assert run(go()) == "alice"


def test_placement_reads_changed_rows_and_the_machines_it_may_not_use_on_both_backends(db_location):
    from actors.db import cluster_store

    async def go():
        s = store.Store(db_location)
        acct = await s.create_account("prov", "h", domain.Role.PROVIDER, 1.0)
        for i, now in enumerate([10.0, 20.0, 30.0]):
            await s.upsert_machine(
                machine_id=f"m-00000000000{i}",
                provider_id=acct["id"],
                machine_key=f"key-0000{i}",
                name=f"n{i}",
                spec=spec(),
                price_per_gpu_hour=0,
                price_per_cpu_hour=0.1,
                now=now,
            )
        await s.set_machine_status("m-000000000002", domain.MachineStatus.GONE)
        await s.upsert_machine(
            machine_id="m-000000000003",
            provider_id=acct["id"],
            machine_key="key-00003",
            name="n3",
            spec=spec(1),
            price_per_gpu_hour=1,
            price_per_cpu_hour=0.1,
            now=30.0,
            gpu_check=(domain.GpuVerification.PENDING, "{}"),
        )
        await s.upsert_machine(
            machine_id="m-000000000000",
            provider_id=acct["id"],
            machine_key="key-00000",
            name="n0",
            spec=spec(),
            price_per_gpu_hour=0,
            price_per_cpu_hour=0.2,
            now=40.0,
        )
        await s.close()
        c = cluster_store.ClusterStore(db_location)
        changed = await c.placement_machines(changed_since=35.0)
        every = await c.placement_machines()
        try:
            return changed, every, await c.unplaceable_machine_ids(cutoff=25.0)
        finally:
            await c.close()

    changed, every, unplaceable = run(go())
    assert [(r["id"], r["price_per_cpu_hour"], r["provider"]) for r in changed] == [("m-000000000000", 0.2, "prov")]
    assert len(every) == 4
    # m-1 beat last at 20 (before the cutoff), m-2 left, m-3's GPU check is due; m-0 beat again at 40.
    assert unplaceable == {"m-000000000001", "m-000000000002", "m-000000000003"}


def test_heartbeats_of_many_machines_are_one_write_and_machines_read_at_once(db_location):
    async def go():
        s = store.Store(db_location)
        acct = await s.create_account("prov", "h", domain.Role.PROVIDER, 1.0)
        ids = [f"m-00000000000{i}" for i in range(3)]
        for i, machine_id in enumerate(ids):
            await s.upsert_machine(
                machine_id=machine_id,
                provider_id=acct["id"],
                machine_key=f"key-0000{i}",
                name=f"n{i}",
                spec=spec(),
                price_per_gpu_hour=0,
                price_per_cpu_hour=0,
                now=10.0,
            )
        await s.record_heartbeats(
            [(ids[0], domain.MachineUsage(cpu_percent=50)), (ids[1], domain.MachineUsage())],
            now=14.0,
            online_within_s=15.0,
        )
        rows = await s.get_machines([ids[1], ids[0], ids[0], "m-ffffffffffff"])
        await s.close()
        return ids, rows

    ids, rows = run(go())
    assert sorted(rows) == ids[:2]  # the unknown id is absent, a repeated one read once
    assert rows[ids[0]]["last_heartbeat"] == 14.0 and rows[ids[0]]["online_seconds"] == 4.0
    assert json.loads(rows[ids[0]]["usage"])["cpu_percent"] == 50 and rows[ids[1]]["last_heartbeat"] == 14.0
