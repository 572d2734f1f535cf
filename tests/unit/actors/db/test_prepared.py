"""The fast path (actors.db.prepared): statements compiled once per database and run on the driver's connection
give the same rows as SQLAlchemy's own execution, on SQLite and a real PostgreSQL (tests/pg_server.py): IN lists
of every length (padded), ids with quotes, ids that do not exist, the heartbeat write, errors as the slow path's."""

import asyncio
import json
import re

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from actors.db import busy, cluster_queries, cluster_store, database, prepared, store
from actors.db.schema import accounts, clusters, leases, machines
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec

pytestmark = pytest.mark.anyio

# Ids a caller might send: quotes, SQL, wildcards and backslashes are data, never SQL.
ODD_IDS = ["c-o'brien", 'c-"quoted"', "c-x'); DROP TABLE clusters; --", "c-100%_\\", "c-ünï"]
CLUSTER_IDS = [f"c-{i:012d}" for i in range(20)] + ODD_IDS
MISSING = ["c-ffffffffffff", "c-'missing'"]


def test_lists_are_padded_to_a_power_of_two():
    assert [prepared.padded_length(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 500)] == [0, 1, 2, 4, 4, 8, 8, 16, 512]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), pg_asyncpg.dialect()], ids=["sqlite", "postgresql"])
def test_a_form_fills_in_constants_parameters_and_padded_lists_in_order(dialect):
    statement = database.prepared(
        sa.update(machines)
        .where(
            machines.c.id.in_(sa.bindparam("ids", expanding=True)),
            machines.c.status.in_(("online", "offline")),
            machines.c.gpus > sa.bindparam("gpus"),
        )
        .values(name=sa.bindparam("name"), cpus=7)
    )
    assert statement.keys == ("gpus", "ids", "name") and statement.lists == ("ids",)
    forms = prepared.Forms(dialect)
    sql, arguments = forms.bind(statement, {"ids": ["a", "b", "c"], "gpus": 2, "name": "n'1"})
    # Each placeholder gets its value (the last id again: 4 of them), whatever the dialect's numbering.
    assert as_read(sql, arguments) == ("n'1", 7, "a", "b", "c", "c", "online", "offline", 2)
    assert "'" not in sql  # every value is an argument
    assert forms.bind(statement, {"ids": ["x", "y", "z", "w"], "gpus": 0, "name": "m"})[0] == sql  # one form for 3-4
    five, _ = forms.bind(statement, {"ids": list("abcde"), "gpus": 0, "name": "m"})
    assert five != sql
    empty, arguments = forms.bind(statement, {"ids": [], "gpus": 0, "name": "m"})
    assert len(arguments) == 5  # no item of the list: SQLAlchemy's empty IN, which matches nothing
    with pytest.raises(ValueError, match="'name'"):
        forms.bind(statement, {"ids": ["a"], "gpus": 0})
    for not_a_list in ("abc", None):
        with pytest.raises(ValueError, match="'ids' takes a list"):
            forms.bind(statement, {"ids": not_a_list, "gpus": 0, "name": "m"})


async def seed(db: database.Database) -> None:
    """An account, a machine, the clusters of CLUSTER_IDS, and 0-3 leases each (some with no ports or tags)."""
    await db.insert_rows(
        accounts, [{"id": 1, "username": "buyer", "password_hash": "h", "role": "buyer", "created_at": 1.0}]
    )
    await db.insert_rows(
        machines,
        [
            {
                "id": "m-000000000001",
                "provider_id": 1,
                "machine_key": "k",
                "name": "box",
                "spec": "{}",
                "gpu_model": None,
                "gpus": 0,
                "cpus": 64,
                "memory_mb": 1000,
                "price_per_gpu_hour": 0.0,
                "price_per_cpu_hour": 0.25,
                "status": "online",
                "registered_at": 1.0,
            }
        ],
    )
    await db.insert_rows(
        clusters,
        [
            {
                "id": cid,
                "owner_id": 1,
                "name": f"name of {cid}",
                "spec": ClusterSpec(num_workers=i + 1, duration_s=600).model_dump_json(),
                "status": "running" if i % 2 else "pending",
                "reason": "a 'reason'" if i % 3 == 0 else None,
                "created_at": 10.0 + i,
                "updated_at": 11.5 + i,
                "expires_at": 1e9 + i,
                "running_at": 12.25 if i % 2 else None,
            }
            for i, cid in enumerate(CLUSTER_IDS)
        ],
    )
    await db.insert_rows(
        leases,
        [
            {
                "id": f"l-{i:03d}-{n}",
                "cluster_id": cid,
                "machine_id": "m-000000000001",
                "role": "head" if n == 0 else "worker",
                "gpus": "[]",
                "cpus": 1 + n,
                "price_per_cpu_hour": 0.25,
                "status": "open" if n else "reserved",
                "tags": json.dumps({"n": n}),
                "ports": json.dumps({"gcs": 6379 + n}) if n else None,
                "node_ip": "10.0.0.1" if n else None,
                "created_at": 20.0 + (i * 7 + n) % 5,  # equal times: the id orders them
                "opened_at": 21.0 if n else None,
            }
            for i, cid in enumerate(CLUSTER_IDS)
            for n in range(i % 4)
        ],
    )


@pytest.fixture
async def seeded(db_location, closing):
    db = cluster_store.ClusterStore(db_location)
    closing.push_async_callback(db.close)
    await seed(db)
    return db


def id_lists():
    """IN lists of every padded length up to 32, with missing, odd and repeated ids among them."""
    pool = CLUSTER_IDS + MISSING
    lists = [pool[:n] for n in (1, 2, 3, 4, 5, 7, 8, 9, 16, 17, len(pool))]
    lists += [ODD_IDS, MISSING, [CLUSTER_IDS[3]] * 3 + [MISSING[1]], list(reversed(pool))]
    return lists


async def test_the_cluster_reads_give_what_sqlalchemy_gives_on_both_backends(seeded):
    with_leases = {cid for i, cid in enumerate(CLUSTER_IDS) if i % 4}
    for ids in id_lists():
        found = await seeded.fetch_all(cluster_queries.CLUSTERS_BY_IDS, {"ids": ids})
        assert _by_id(found) == _by_id(await seeded.fetch_all(cluster_queries.CLUSTERS_BY_IDS.statement, {"ids": ids}))
        assert {r["id"] for r in found} == set(ids) & set(CLUSTER_IDS)
        found = await seeded.fetch_all(cluster_queries.LEASES_OF_CLUSTERS, {"ids": ids})
        assert found == await seeded.fetch_all(cluster_queries.LEASES_OF_CLUSTERS.statement, {"ids": ids})
        assert {r["cluster_id"] for r in found} == set(ids) & with_leases
    for cid in [*ODD_IDS, CLUSTER_IDS[7], *MISSING]:
        fast_row = await seeded.fetch_one(cluster_queries.CLUSTER_BY_ID, {"cluster_id": cid})
        assert fast_row == await seeded.fetch_one(cluster_queries.CLUSTER_BY_ID.statement, {"cluster_id": cid})
        assert (fast_row is None) == (cid in MISSING)
        assert await seeded.fetch_all(cluster_queries.LEASES_OF, {"cluster_id": cid}) == await seeded.fetch_all(
            cluster_queries.LEASES_OF.statement, {"cluster_id": cid}
        )
    assert await seeded.fetch_all(cluster_queries.CLUSTERS_BY_IDS, {"ids": []}) == []
    ids = await seeded.fetch_column(cluster_queries.CLUSTERS_BY_IDS, {"ids": ODD_IDS + MISSING})
    assert sorted(ids) == sorted(ODD_IDS)
    each = await seeded.fetch_each(
        [
            (cluster_queries.CLUSTER_BY_ID, {"cluster_id": ODD_IDS[1]}),
            (cluster_queries.LEASES_OF, {"cluster_id": ODD_IDS[1]}),
        ]
    )
    assert each == [
        [await seeded.fetch_one(cluster_queries.CLUSTER_BY_ID.statement, {"cluster_id": ODD_IDS[1]})],
        await seeded.fetch_all(cluster_queries.LEASES_OF.statement, {"cluster_id": ODD_IDS[1]}),
    ]


async def test_the_stores_batched_reads_answer_each_id_asked(seeded):
    asked = [CLUSTER_IDS[6], ODD_IDS[2], MISSING[0], CLUSTER_IDS[6], ODD_IDS[0]]
    found = await seeded.get_clusters(asked)
    assert sorted(found) == sorted({CLUSTER_IDS[6], ODD_IDS[2], ODD_IDS[0]})
    cluster = found[ODD_IDS[2]]  # a record (actors.db.records), decoded from the fast path's row
    assert cluster.name == f"name of {ODD_IDS[2]}" and cluster.expires_at == 1e9 + CLUSTER_IDS.index(ODD_IDS[2])
    assert isinstance(cluster.owner_id, int) and isinstance(cluster.created_at, float)
    assert cluster.spec.num_workers == CLUSTER_IDS.index(ODD_IDS[2]) + 1
    by_cluster = await seeded.leases_of_clusters(asked)
    assert sorted(by_cluster) == sorted(set(asked))
    assert by_cluster[MISSING[0]] == []
    for cid in set(asked):
        assert by_cluster[cid] == await seeded.leases_of(cid)
        assert len(by_cluster[cid]) == (CLUSTER_IDS.index(cid) % 4 if cid in CLUSTER_IDS else 0)
    assert await seeded.clusters_with_leases(asked) == (found, by_cluster)  # both in one hop
    assert await seeded.clusters_with_leases([]) == ({}, {})
    lease = next(lease for lease in by_cluster[CLUSTER_IDS[6]] if lease.role == domain.NodeRole.WORKER)
    assert lease.tags == {"n": 1} and lease.ports == {"gcs": 6380} and not lease.gpus


async def test_a_prepared_write_counts_rows_once_however_its_list_is_padded(seeded):
    rename = database.prepared(
        sa.update(clusters)
        .where(clusters.c.id.in_(sa.bindparam("ids", expanding=True)))
        .values(name=sa.bindparam("name"))
    )
    assert await seeded.write(rename, {"ids": [*ODD_IDS, MISSING[0]], "name": "it's renamed"}) == len(ODD_IDS)
    assert await seeded.write(rename, {"ids": [], "name": "none"}) == 0
    found = await seeded.get_clusters(CLUSTER_IDS)
    names = {cid: cluster.name for cid, cluster in found.items()}
    assert {cid for cid, name in names.items() if name == "it's renamed"} == set(ODD_IDS)
    assert names[CLUSTER_IDS[0]] == f"name of {CLUSTER_IDS[0]}"


async def test_a_prepared_write_that_breaks_a_constraint_is_the_integrity_error_and_writes_nothing(seeded):
    add = database.prepared(
        sa.insert(accounts).values(username=sa.bindparam("username"), password_hash="h", role="buyer", created_at=1.0)
    )
    with pytest.raises(database.IntegrityError):
        await seeded.write_many(add, [{"username": "new one"}, {"username": "buyer"}])  # the second is taken
    names = await seeded.fetch_column(sa.select(accounts.c.username))
    assert names == ["buyer"]


async def test_heartbeats_on_the_fast_path_count_time_online_as_before(db_location, closing):
    s = store.Store(db_location)
    closing.push_async_callback(s.close)
    account = await s.create_account("prov", "h", domain.Role.PROVIDER, 1.0)
    spec = domain.MachineSpec(hostname="h", cpus=8, memory_mb=1000, gpus=[])
    ids = [f"m-00000000000{i}" for i in range(5)]
    for i, machine_id in enumerate(ids):
        await s.upsert_machine(
            machine_id=machine_id,
            provider_id=account["id"],
            machine_key=f"key-{i}",
            name=f"n'{i}",
            spec=spec,
            price_per_gpu_hour=0,
            price_per_cpu_hour=0,
            now=10.0,
        )
    await s.set_machine_status(ids[4], domain.MachineStatus.OFFLINE)
    beats = [(machine_id, domain.MachineUsage(cpu_percent=10 * i)) for i, machine_id in enumerate(ids)]
    await s.record_heartbeats([*beats[:3], ("m-ffffffffffff", domain.MachineUsage())], now=14.0, online_within_s=15.0)
    await s.record_heartbeats(beats, now=40.0, online_within_s=15.0)  # 26 s after the last: not time online
    await s.record_heartbeats(beats[:2], now=50, online_within_s=15)  # integers where the columns hold floats
    rows = await s.get_machines([*ids, "m-ffffffffffff"])
    assert sorted(rows) == ids
    assert [rows[m]["online_seconds"] for m in ids] == [14.0, 14.0, 4.0, 0.0, 0.0]
    assert [rows[m]["last_heartbeat"] for m in ids] == [50.0, 50.0, 40.0, 40.0, 40.0]
    assert {rows[m]["status"] for m in ids} == {"online"}  # a beat brings an offline machine back
    assert json.loads(rows[ids[3]]["usage"])["cpu_percent"] == 30 and rows[ids[0]]["provider"] == "prov"
    slow = await s.fetch_all(store._MACHINES_BY_IDS.statement, {"ids": ids})
    assert _by_id(slow) == _by_id(list(rows.values()))
    await s.insert_rows(
        clusters,
        [
            {
                "id": "c-1",
                "owner_id": account["id"],
                "name": "c",
                "spec": "{}",
                "status": "running",
                "created_at": 1.0,
                "updated_at": 1.0,
                "expires_at": 9.0,
            }
        ],
    )
    await s.insert_rows(
        leases,
        [
            {
                "id": f"l-{n}",
                "cluster_id": "c-1",
                "machine_id": ids[1],
                "role": "worker",
                "gpus": "[]",
                "cpus": 1,
                "status": status,
                "created_at": 1.0,
            }
            for n, status in enumerate(["open", "reserved", "closed"])
        ],
    )
    assert await s.live_lease_ids([ids[1], ids[0]]) == {ids[1]: {"l-0", "l-1"}, ids[0]: set()}
    await s.write(  # a GPU check running on the first machine: its check lease is live too
        sa.update(machines).where(machines.c.id == ids[0]).values(gpu_check="checking", gpu_check_lease="l-check")
    )
    await s.write(sa.update(machines).where(machines.c.id == ids[2]).values(gpu_check_lease="l-done"))  # checked
    assert await s.live_lease_ids(ids[:3]) == {ids[0]: {"l-check"}, ids[1]: {"l-0", "l-1"}, ids[2]: set()}
    assert await s.live_lease_ids([]) == {}


def test_a_prepared_write_on_a_locked_sqlite_file_gives_up_busy(tmp_path):
    """Another process holds SQLite's write lock: the fast path's write waits its lock_wait_s, then fails busy,
    and leaves no transaction open behind it."""
    import sqlite3

    async def go():
        s = store.Store(tmp_path / "p.db")
        await s.create_account("alice", "h", domain.Role.BUYER, 1.0)
        rename = database.prepared(
            sa.update(accounts).where(accounts.c.id == sa.bindparam("id")).values(username=sa.bindparam("name"))
        )
        other = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(busy.DatabaseBusy):
                await s.write(rename, {"id": 1, "name": "bob"}, lock_wait_s=0.3)
        finally:
            other.execute("ROLLBACK")
            other.close()
        changed = await asyncio.wait_for(s.write(rename, {"id": 1, "name": "carol"}, lock_wait_s=0.3), 5)
        names = await s.fetch_column(sa.select(accounts.c.username))
        await s.close()
        return changed, names

    assert asyncio.run(go()) == (1, ["carol"])


def as_read(sql, arguments):
    """The arguments in the order the SQL's placeholders appear (`?`; PostgreSQL's `$n` name theirs)."""
    numbered = re.findall(r"\$(\d+)", sql)
    return tuple(arguments[int(n) - 1] for n in numbered) if numbered else arguments


def _by_id(rows):
    return sorted(rows, key=lambda r: r["id"])
