"""actors.machines.work_channel: queues, the long poll, answers awaited and bounded (plain asyncio, no store)."""

import asyncio

import pytest

from actors.machines import work_channel
from dcl_core import errors, protocol

pytestmark = pytest.mark.anyio
LEASE = "l-0123456789ab"


async def test_a_waiting_poll_is_woken_by_the_item_pushed_for_its_machine_only():
    channel = work_channel.WorkChannel()
    poll = asyncio.create_task(channel.wait("m-1", 10))
    other = channel.push("m-2", "lease.open", {"n": 2})
    await asyncio.sleep(0)
    assert not poll.done()
    item = channel.push("m-1", "lease.open", {"n": 1})
    assert await asyncio.wait_for(poll, 1) == [item]
    assert await channel.wait("m-1", 0) == []  # each item is handed over once
    assert await channel.wait("m-2", 0) == [other]


async def test_send_returns_the_agents_answer_and_refuses_an_answer_from_another_machine():
    channel = work_channel.WorkChannel()
    command = protocol.LeaseExec(lease_id=LEASE, op="run", cmd="true")
    sent = asyncio.create_task(channel.send("m-1", protocol.LEASE_EXEC, command, 10))
    (item,) = await channel.wait("m-1", 1)
    assert item["kind"] == protocol.LEASE_EXEC and item["payload"] == command.model_dump()  # as the agent reads it
    with pytest.raises(errors.NotFound):
        channel.answer("m-2", item["id"], protocol.WorkResult(ok=True))
    channel.answer("m-1", item["id"], protocol.WorkResult(ok=True, exit_code=0))
    assert await asyncio.wait_for(sent, 1) == protocol.WorkResult(ok=True, exit_code=0)
    with pytest.raises(errors.NotFound):  # answered once; nobody waits any more
        channel.answer("m-1", item["id"], protocol.WorkResult(ok=True))


async def test_an_unanswered_item_times_out_and_never_runs_late():
    channel = work_channel.WorkChannel()
    result = await channel.send("m-1", protocol.LEASE_CLOSE, protocol.LeaseClose(lease_id=LEASE), 0.01)
    assert result == protocol.WorkResult(
        ok=False, exit_code=None, data={}, output="machine m-1 did not answer lease_close within 0 s"
    )
    assert await channel.wait("m-1", 0) == []  # taken off the queue: the agent never sees it


async def test_wake_releases_a_poll_in_flight_with_nothing():
    channel = work_channel.WorkChannel()
    poll = asyncio.create_task(channel.wait("m-1", 10))
    await asyncio.sleep(0)
    channel.wake("m-1")
    assert await asyncio.wait_for(poll, 1) == []


@pytest.mark.parametrize(
    "data, named",
    [
        ({"ports": {"dashboard": 8265}, "node_ip": "head.example.com"}, "not a literal IP address"),
        ({"ports": {"dashboard": 8265}, "node_ip": "255.255.255.255"}, "not a unicast address"),
        ({"ports": {"dashboard": 0}, "node_ip": "10.0.0.1"}, "not an integer in 1-65535"),
    ],
)
async def test_an_opened_lease_reporting_an_address_the_platform_will_not_connect_to_is_400(data, named):
    channel = work_channel.WorkChannel()
    opening = protocol.LeaseOpen(lease_id=LEASE, purpose=protocol.GPU_CHECK_LEASE, ray_auth_token="t" * 32)
    sent = asyncio.create_task(channel.send("m-1", protocol.LEASE_OPEN, opening, 10))
    (item,) = await channel.wait("m-1", 1)
    answer = protocol.WorkResult(ok=True, data=data)
    with pytest.raises(errors.InvalidInput, match=named):
        channel.answer("m-1", item["id"], answer)
    # The caller still gets the answer: it closes the node the agent opened (actors/clusters/lease_opener.py).
    assert await asyncio.wait_for(sent, 1) == answer


async def test_an_opened_lease_with_a_unicast_ip_and_valid_ports_is_taken():
    channel = work_channel.WorkChannel()
    opening = protocol.LeaseOpen(lease_id=LEASE, purpose=protocol.GPU_CHECK_LEASE, ray_auth_token="t" * 32)
    sent = asyncio.create_task(channel.send("m-1", protocol.LEASE_OPEN, opening, 10))
    (item,) = await channel.wait("m-1", 1)
    answer = protocol.WorkResult(ok=True, data={"ports": {"dashboard": 8265}, "node_ip": "198.51.100.7"})
    channel.answer("m-1", item["id"], answer)
    assert await asyncio.wait_for(sent, 1) == answer
