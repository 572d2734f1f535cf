"""GPU checks end to end in the control plane: a real store, the real registry for registrations and results,
the GpuChecker, and an agent stand-in that runs the real check (worker.agent.gpu_check) on a fake NVML."""

import asyncio
import contextlib
import io
import json

import pydantic
import pytest
import sqlalchemy as sa

from actors.access import agent_keys, auth
from actors.db import cluster_store
from actors.db import store as store_mod
from actors.machines import gpu_checks
from actors.machines import registry as registry_mod
from actors.settings import PlatformSettings
from dcl_core import domain, errors, protocol
from dcl_core.cluster_spec import ClusterSpec
from worker.agent import gpu_check

pytestmark = pytest.mark.anyio

V = domain.GpuVerification
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}


def spec(gpus=2, declared=False, sandbox="bwrap"):
    return {
        "hostname": "h",
        "cpus": 8,
        "memory_mb": 16000,
        "gpus_declared": declared,
        "sandbox": sandbox,
        "gpus": [{"index": i, "model": H100["name"], "memory_mb": H100["memory_mb"]} for i in range(gpus)],
    }


class CheckingAgent:
    """Answers the platform's work as an agent would: opens the check lease, runs the real check (on a fake
    NVML that sees `visible` GPUs), closes it; `gate` holds the check until the test lets it finish."""

    def __init__(self, monkeypatch, visible=2):
        self.monkeypatch, self.visible = monkeypatch, visible
        self.sent: list[tuple[str, str, dict]] = []
        self.fail_open = False
        self.gate: asyncio.Event | None = None
        self.at_gate = asyncio.Event()  # set once the check waits at the gate

    async def send_work(
        self, machine_id: str, kind: str, payload: protocol.WorkPayload, timeout_s: float
    ) -> protocol.WorkResult:
        return protocol.WorkResult.model_validate(await self.answer(machine_id, kind, payload.model_dump()))

    async def answer(self, machine_id: str, kind: str, payload: dict) -> dict:
        """What the agent answers, as the JSON it would post."""
        self.sent.append((machine_id, kind, payload))
        if kind == protocol.LEASE_OPEN:
            opening = protocol.LeaseOpen.model_validate(payload)
            assert opening.purpose == protocol.GPU_CHECK_LEASE and opening.cluster_id is None
            if self.fail_open:
                return {"ok": False, "output": "GPU 1 has no device node /dev/nvidia1", "data": {}}
            return {"ok": True, "exit_code": 0, "output": "", "data": {}}
        if kind == protocol.LEASE_EXEC:
            assert protocol.LeaseExec.model_validate(payload).cmd == protocol.GPU_CHECK_COMMAND
            if self.gate is not None:
                self.at_gate.set()
                await self.gate.wait()
            self.monkeypatch.setenv(protocol.ENV_TEST_FAKE_NVML, json.dumps({"gpus": [H100] * self.visible}))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                gpu_check.main()
            return {"ok": True, "exit_code": 0, "output": "warming up\n" + out.getvalue(), "data": {}}
        return {"ok": True, "exit_code": 0, "output": "", "data": {}}


@pytest.fixture
def platform(tmp_path, clock):
    settings = PlatformSettings(state_dir=tmp_path, bcrypt_rounds=4, gpu_check_accepts_fake_nvml=True)
    return settings, clock


@pytest.fixture
def start(closing):
    """Starts the registry (with a signed-in provider) and a GpuChecker whose agent is `agent`; their stores are
    closed after the test."""

    async def start(settings, clock, agent):
        reg_db, cm_db = store_mod.Store(settings.db_path), cluster_store.ClusterStore(settings.db_path)
        closing.push_async_callback(reg_db.close)
        closing.push_async_callback(cm_db.close)
        reg = registry_mod.ProviderRegistry(reg_db, settings, clock=clock, limiter=auth.LoginLimiter(clock=clock))
        checker = gpu_checks.GpuChecker(
            cm_db, settings, registry=agent, placement_lock=cm_db.placement_lock(), clock=clock
        )
        await reg.start()
        await reg.create_account("prov1", "password123", domain.Role.PROVIDER)
        token = (await reg.login("prov1", "password123"))["access_token"]
        provider = auth.TokenIssuer(await reg.signing_secret(), clock=clock).verify(token)
        return reg, cm_db, checker, provider

    return start


async def register(reg, caller, machine_spec, key="mk-00000001"):
    return await reg.register_machine(
        caller,
        {
            "machine_key": key,
            "name": "box",
            "spec": machine_spec,
            "price_per_gpu_hour": 1.0,
            "price_per_cpu_hour": 0.01,
        },
    )


async def finish(checker):
    await asyncio.gather(*checker.in_flight().values())


async def test_a_new_machine_is_held_from_placement_until_its_check_lease_verified_it(platform, start, monkeypatch):
    settings, clock = platform
    agent = CheckingAgent(monkeypatch)
    reg, cm, checker, provider = await start(settings, clock, agent)
    machine = await register(reg, provider, spec())
    mid, cutoff = machine["id"], settings.online_cutoff(clock())
    assert machine["gpu_verification"]["status"] == "pending"
    assert await cm.online_machines(cutoff) == []  # no buyer lease before the check
    agent.gate = asyncio.Event()
    assert await checker.run_once() == [mid]
    await asyncio.wait_for(agent.at_gate.wait(), 5)
    row = await cm.fetch_one(sa.text("SELECT gpu_check, gpu_check_lease FROM machines WHERE id = :id"), {"id": mid})
    assert row["gpu_check"] == "checking" and await cm.online_machines(cutoff) == []
    # The agent's heartbeat names the check lease: the registry does not call it stale.
    answer = await reg.heartbeat(provider, mid, {}, [row["gpu_check_lease"]])
    assert answer["stale_leases"] == []
    assert await checker.run_once() == []  # one check at a time per machine
    agent.gate.set()
    await finish(checker)
    public = await reg.get_machine(provider, mid)
    leasable, sent, lease_id = [m["id"] for m in await cm.online_machines(cutoff)], agent.sent, row["gpu_check_lease"]
    verification = public["gpu_verification"]
    assert verification["status"] == "verified" and verification["nvml"] == "fake"
    assert [g["model"] for g in verification["seen"]] == [H100["name"]] * 2
    assert verification["benchmarks"] and verification["benchmarks"][-1]["device"] == "cpu"
    assert leasable == [public["id"]]
    # Open (every GPU) → the check → close, all on the one check lease.
    assert [kind for _, kind, _ in sent] == [protocol.LEASE_OPEN, protocol.LEASE_EXEC, protocol.LEASE_CLOSE]
    assert sent[0][2]["gpu_indices"] == [0, 1] and {p["lease_id"] for _, _, p in sent} == {lease_id}


async def test_fewer_gpus_in_the_lease_than_claimed_is_a_mismatch_and_the_machine_stays_leasable(
    platform, start, monkeypatch
):
    settings, clock = platform
    reg, cm, checker, provider = await start(settings, clock, CheckingAgent(monkeypatch, visible=1))
    mid = (await register(reg, provider, spec(gpus=2)))["id"]
    await checker.run_once()
    await finish(checker)
    verification = (await reg.get_machine(provider, mid))["gpu_verification"]
    leasable = await cm.online_machines(settings.online_cutoff(clock()))
    assert verification["status"] == "mismatch"
    assert verification["differences"] == ["count: the machine claims 2 GPU(s), the check lease saw 1"]
    assert len(leasable) == 1  # flagged, not banned: buyers see it in offers


async def test_a_check_that_cannot_open_leaves_the_machine_unverified_with_the_reason(platform, start, monkeypatch):
    settings, clock = platform
    agent = CheckingAgent(monkeypatch)
    agent.fail_open = True
    reg, cm, checker, provider = await start(settings, clock, agent)
    mid = (await register(reg, provider, spec()))["id"]
    await checker.run_once()
    await finish(checker)
    verification = (await reg.get_machine(provider, mid))["gpu_verification"]
    assert verification["status"] == "unverified" and "no device node" in verification["reason"]


async def test_a_busy_machine_is_checked_once_no_lease_holds_anything_of_it(platform, start, monkeypatch):
    settings, clock = platform
    reg, cm, checker, provider = await start(settings, clock, CheckingAgent(monkeypatch))
    machine = await register(reg, provider, spec(declared=True))  # leasable: declared GPUs
    mid = machine["id"]
    await cm.create_cluster(
        cluster={
            "id": "c-000000000001",
            "owner_id": 1,
            "name": "x",
            "spec": ClusterSpec(num_workers=1, duration_s=600).model_dump_json(),
            "status": "running",
            "expires_at": clock() + 3600,
        },
        leases=[{"id": "l-000000000001", "machine_id": mid, "role": "worker", "gpus": [0], "cpus": 1}],
        event="created",
        now=clock(),
    )
    # Its agent restarts and now detects its GPUs: the claim changed, a check is due.
    key = agent_keys.parse(machine["agent_key"])
    assert (await register(reg, key, spec()))["gpu_verification"]["status"] == "pending"
    assert await checker.run_once() == []  # a buyer's lease holds GPU 0
    await cm.end_lease("l-000000000001", domain.LeaseStatus.CLOSED, clock())
    started = await checker.run_once()
    await finish(checker)
    assert started == [mid]
    assert (await reg.get_machine(provider, mid))["gpu_verification"]["status"] == "verified"


async def test_registering_again_during_a_check_makes_its_outcome_moot(platform, start, monkeypatch):
    settings, clock = platform
    agent = CheckingAgent(monkeypatch)
    agent.gate = asyncio.Event()
    reg, cm, checker, provider = await start(settings, clock, agent)
    machine = await register(reg, provider, spec(gpus=2))
    await checker.run_once()
    await asyncio.wait_for(agent.at_gate.wait(), 5)
    key = agent_keys.parse(machine["agent_key"])
    await register(reg, key, spec(gpus=4))  # a new claim while the old one is being checked
    agent.gate.set()
    await finish(checker)
    status = (await reg.get_machine(provider, machine["id"]))["gpu_verification"]["status"]
    assert status == "pending"  # the 2-GPU check says nothing of 4 GPUs


async def test_a_restart_makes_a_cut_short_check_due_again_and_assesses_old_machines(platform, start, monkeypatch):
    settings, clock = platform
    reg, cm, checker, provider = await start(settings, clock, CheckingAgent(monkeypatch))
    checking = (await register(reg, provider, spec()))["id"]
    await cm.begin_gpu_check(checking, "l-00000000000a")
    legacy = (await register(reg, provider, spec(declared=True), key="mk-00000002"))["id"]
    await cm.write(sa.text("UPDATE machines SET gpu_check = NULL WHERE id = :id"), {"id": legacy})
    await checker.recover()
    rows = {r["id"]: r for r in await cm.fetch_all(sa.text("SELECT id, gpu_check, gpu_check_lease FROM machines"))}
    checking, legacy = rows[checking], rows[legacy]
    assert (checking["gpu_check"], checking["gpu_check_lease"]) == ("pending", None)
    assert legacy["gpu_check"] == "declared"


async def test_a_provider_cannot_mark_its_machine_verified(platform, start, monkeypatch):
    """No route sets the status; a result counts only as the answer to a check the platform started, from the
    machine it was sent to; the spec cannot carry a status."""
    settings, clock = platform
    reg, cm, checker, provider = await start(settings, clock, CheckingAgent(monkeypatch))
    mine = await register(reg, provider, spec())
    other = await register(reg, provider, spec(), key="mk-00000002")
    key = agent_keys.parse(mine["agent_key"])
    forged = protocol.WorkResult(
        ok=True,
        exit_code=0,
        output=protocol.GPU_CHECK_MARKER
        + protocol.GpuCheckReport(
            nvml="nvml", gpus=[domain.GpuInfo(index=i, model=H100["name"], memory_mb=81559) for i in range(2)]
        ).model_dump_json(),
    )
    for machine_id in (mine["id"], other["id"]):  # its own machine, and another one
        for caller in (key, provider):
            with pytest.raises(errors.NotFound):
                await reg.complete_work(caller, machine_id, "w-0123456789ab", forged)
    with pytest.raises(pydantic.ValidationError):
        await register(reg, key, {**spec(), "gpu_verification": "verified"})
    statuses = [(await reg.get_machine(provider, m["id"]))["gpu_verification"]["status"] for m in (mine, other)]
    assert statuses == ["pending", "pending"]


async def test_offers_count_machines_and_gpus_by_verification(platform, start, monkeypatch):
    settings, clock = platform
    reg, cm, checker, provider = await start(settings, clock, CheckingAgent(monkeypatch))
    await register(reg, provider, spec())
    await register(reg, provider, spec(declared=True), key="mk-00000002")
    await checker.run_once()
    await finish(checker)
    offers = await reg.list_offers()
    assert len(offers) == 1
    assert offers[0]["gpu_verification"] == {"verified": 1, "declared": 1} and offers[0]["verified_gpus"] == 2


async def test_a_check_whose_outcome_could_not_be_written_is_due_again(platform, start, monkeypatch):
    settings, clock = platform
    reg, cm, checker, provider = await start(settings, clock, CheckingAgent(monkeypatch))
    mid = (await register(reg, provider, spec()))["id"]

    async def database_busy(*args):
        raise OSError("database is locked")

    monkeypatch.setattr(cm, "finish_gpu_check", database_busy)
    await checker.run_once()
    await finish(checker)  # logged, not raised
    row = await cm.fetch_one(sa.text("SELECT gpu_check FROM machines WHERE id = :id"), {"id": mid})
    assert row["gpu_check"] == "checking"
    monkeypatch.undo()
    assert await checker.run_once() == [mid]  # not stuck in checking (and out of placement) for good
    await finish(checker)
    assert (await reg.get_machine(provider, mid))["gpu_verification"]["status"] == "verified"
