"""The PostgreSQL backend: which locations it takes, busy errors, reservations under concurrent creates from
several processes' worth of managers, and `dcluster up --database` reaching the store. A real server
(benchmarks/pg_server.py)."""

import asyncio

import pytest

from actors.access import auth
from actors.clusters import cluster_manager
from actors.db import busy, cluster_store, database, migrate, store
from actors.settings import PlatformSettings
from cli import main as cli_main
from cli.platform import errors as platform_errors
from cli.platform import launcher as platform_launcher
from cli.platform import serve_deploy
from dcl_core import domain, errors
from dcl_core.cluster_spec import ClusterSpec
from tests.statements import statements_seen
from tests.unit.actors.clusters.test_cluster_manager import FakeRegistry, seed_market


def test_backend_is_chosen_by_location(tmp_path):
    assert store.Store(tmp_path / "p.db").backend == database.SQLITE
    assert store.Store("postgresql://u@h:5432/d").backend == database.POSTGRESQL
    assert store.Store("postgres://u@h/d").backend == database.POSTGRESQL


def test_a_busy_postgres_is_a_retry_and_other_errors_are_not():
    import asyncpg

    assert busy.is_busy(asyncpg.exceptions.SerializationError("could not serialize access"))
    assert busy.is_busy(asyncpg.exceptions.TooManyConnectionsError("too many clients"))
    assert not busy.is_busy(asyncpg.exceptions.UndefinedTableError("no such table"))


class HangingLauncher:
    """A launch that never finishes: the reservation stays held for as long as the test looks."""

    async def create(self, config):
        await asyncio.Event().wait()

    async def teardown(self, config):
        pass


def test_concurrent_creates_on_postgres_lease_no_machine_twice(postgres_server, tmp_path, clock):
    """Eight managers (as eight processes would: a pool, a placement lock each) race for the same two
    machines with clusters that each need all of them: exactly one wins, nothing is leased twice."""
    url = postgres_server.create_database()
    n = 8

    async def go():
        settings = PlatformSettings(state_dir=tmp_path, database=url, api_url="http://127.0.0.1:9")
        db = store.Store(settings.db_location)
        buyer = await seed_market(db, clock)
        stores = [cluster_store.ClusterStore(url) for _ in range(n)]
        managers = [
            cluster_manager.ClusterManager(
                s,
                settings,
                registry=FakeRegistry(clock, settings.offline_after_s),
                launcher=HangingLauncher(),
                clock=clock,
            )
            for s in stores
        ]
        for m in managers:
            await m.start()
        principal = auth.Principal(buyer["id"], "buyer", domain.Role.BUYER)
        spec = ClusterSpec(num_workers=3, cpus_per_worker=2, duration_s=600)  # needs most of both machines
        results = await asyncio.gather(*(m.create_cluster(principal, spec) for m in managers), return_exceptions=True)
        leases = await stores[0].active_leases()
        for m, s in zip(managers, stores, strict=True):
            work = m.background_work()
            for task in work.values():
                task.cancel()
            await asyncio.gather(*work.values(), return_exceptions=True)
            await s.close()
        await db.close()
        return results, leases

    try:
        results, leases = asyncio.run(go())
    finally:
        postgres_server.drop_database(url)
    won = [r for r in results if isinstance(r, dict)]
    lost = [r for r in results if not isinstance(r, dict)]
    assert len(won) == 1 and all(isinstance(e, errors.Conflict) for e in lost), results
    assert {l.cluster_id for l in leases} == {won[0]["id"]} and len(leases) == 4
    per_machine = {}
    for l in leases:
        per_machine[l.machine_id] = per_machine.get(l.machine_id, 0) + l.cpus
    assert set(per_machine) == {"m-000000000000", "m-000000000001"}
    assert all(cpus <= 4 for cpus in per_machine.values()), per_machine  # no CPU of a machine leased twice


def test_the_placement_lock_is_held_by_one_process_at_a_time(postgres_server):
    """Two stores (two processes' pools): the second waits until the first lets go."""
    url = postgres_server.create_database()

    async def go():
        a, b = cluster_store.ClusterStore(url), cluster_store.ClusterStore(url)
        order, a_inside = [], asyncio.Event()

        async def hold(s, name, until_asked=None):
            async with s.placement_lock():
                order.append(f"{name} in")
                a_inside.set()
                if until_asked is not None:
                    await until_asked.reached(times=2)  # b's request for the lock is at the server too
                order.append(f"{name} out")

        with statements_seen("pg_advisory_xact_lock", database.PLACEMENT_LOCK) as asked:
            # Each store opens its database lazily, inside the lock.
            first = asyncio.create_task(hold(a, "a", until_asked=asked))
            await a_inside.wait()
            await hold(b, "b")
            await first
        await a.close()
        await b.close()
        return order

    try:
        assert asyncio.run(go()) == ["a in", "a out", "b in", "b out"]
    finally:
        postgres_server.drop_database(url)


def test_dcluster_up_database_reaches_the_store(postgres_server, tmp_path):
    """`dcluster up --database URL` → the Serve app's args → PlatformSettings → the actors' store."""
    url = postgres_server.create_database()
    try:
        args = cli_main.build_parser().parse_args(["up", "--state-dir", str(tmp_path), "--database", url])
        launcher = platform_launcher.PlatformLauncher(tmp_path, settings=cli_main.up_settings(args))
        config = serve_deploy.patch_serve_config(
            serve_deploy.SERVE_TEMPLATE.read_text(),
            host="127.0.0.1",
            port=8123,
            state_dir=tmp_path,
            heartbeat_interval_s=5,
            settings=launcher.settings,
        )
        settings = PlatformSettings.model_validate(config["applications"][0]["args"])
        assert settings.db_location == url

        async def go():
            s = store.Store(settings.db_location)
            version = await s.schema_version()
            await s.close()
            return s.backend, version

        assert asyncio.run(go()) == (database.POSTGRESQL, migrate.as_version(migrate.head_revision()))
    finally:
        postgres_server.drop_database(url)


def test_without_database_up_keeps_sqlite_and_rejects_other_urls(tmp_path):
    args = cli_main.build_parser().parse_args(["up", "--state-dir", str(tmp_path)])
    assert cli_main.up_settings(args) == {}
    assert PlatformSettings(state_dir=tmp_path).db_location == tmp_path / "platform.db"
    bad = cli_main.build_parser().parse_args(["up", "--database", "mysql://h/d"])
    with pytest.raises(platform_errors.PlatformError, match="postgresql://"):
        cli_main.up_settings(bad)
