"""Provider machines: registration, heartbeats, the agents' work channel, and the offers view."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from dcl_core import api, ids, protocol
from serve_app import agent_protocol, deps

router = APIRouter(tags=["machines"])

MachineId = Annotated[str, Path(pattern=ids.MACHINE_ID_PATTERN, description="Machine id, e.g. m-0123456789ab")]


@router.post(
    "/v1/machines",
    status_code=status.HTTP_201_CREATED,
    response_model=api.MachineRegistered,
    **agent_protocol.AGENT_ROUTE,
)
async def register_machine(
    body: api.MachineRegister, principal: deps.MachineCaller, registry: deps.Registry
) -> dict[str, Any]:
    """Idempotent per (provider, machine_key). With the provider's sign-in it enrolls the machine: the
    answer holds the machine's new agent key (shown once; the key it had is revoked). With that key,
    the agent refreshes what it offers after a restart."""
    return await registry.register_machine.remote(principal, body.model_dump(mode="json"))


@router.get("/v1/machines", response_model=list[api.MachinePublic])
async def list_machines(principal: deps.ProviderOrAdmin, registry: deps.Registry) -> list[dict[str, Any]]:
    return await registry.list_machines.remote(principal)


@router.get("/v1/machines/{machine_id}", response_model=api.MachinePublic)
async def get_machine(
    machine_id: MachineId, principal: deps.ProviderOrAdmin, registry: deps.Registry
) -> dict[str, Any]:
    return await registry.get_machine.remote(principal, machine_id)


@router.post("/v1/machines/{machine_id}/heartbeat", response_model=api.HeartbeatAck, **agent_protocol.AGENT_ROUTE)
async def heartbeat(
    machine_id: MachineId, body: api.Heartbeat, principal: deps.MachineCaller, heartbeats: deps.Heartbeats
) -> dict[str, Any]:
    return await heartbeats((principal, machine_id, body.usage.model_dump(mode="json"), body.leases))


@router.delete("/v1/machines/{machine_id}", response_model=api.MachinePublic, **agent_protocol.AGENT_ROUTE)
async def leave(machine_id: MachineId, principal: deps.MachineCaller, registry: deps.Registry) -> dict[str, Any]:
    """The agent's graceful leave: the machine is marked gone and gets no new leases."""
    return await registry.leave.remote(principal, machine_id)


@router.get("/v1/machines/{machine_id}/work", response_model=api.WorkBatch, **agent_protocol.AGENT_ROUTE)
async def next_work(
    machine_id: MachineId,
    principal: deps.MachineCaller,
    registry: deps.Registry,
    wait_s: Annotated[
        float, Query(ge=0, le=protocol.MAX_LONG_POLL_S, description="Long-poll wait")
    ] = protocol.LONG_POLL_S,
) -> dict[str, Any]:
    """Long poll: the agent's channel for node leases and commands."""
    return {"items": await registry.next_work.remote(principal, machine_id, wait_s)}


@router.post("/v1/machines/{machine_id}/results/{item_id}", response_model=None, **agent_protocol.AGENT_ROUTE)
async def work_result(
    machine_id: MachineId,
    item_id: Annotated[str, Path(pattern=ids.WORK_ITEM_ID_PATTERN)],
    body: api.WorkResult,
    principal: deps.MachineCaller,
    registry: deps.Registry,
) -> dict[str, Any]:
    """The agent's answer to a work item (a lease opened, a command's exit code and output)."""
    return await registry.complete_work.remote(principal, machine_id, item_id, body)


@router.get("/v1/machine-keys", response_model=list[api.MachineKeyPublic])
async def list_machine_keys(principal: deps.ProviderOrAdmin, registry: deps.Registry) -> list[dict[str, Any]]:
    """The agent keys of your machines (every machine's, for admins), active and revoked; never a secret."""
    return await registry.list_machine_keys.remote(principal)


@router.delete("/v1/machine-keys/{key_id}", response_model=api.MachineKeyPublic)
async def revoke_machine_key(
    key_id: Annotated[str, Path(pattern=ids.AGENT_KEY_ID_PATTERN, description="Key id, e.g. k-0123456789ab")],
    principal: deps.ProviderOrAdmin,
    registry: deps.Registry,
) -> dict[str, Any]:
    """Idempotent. The machine's agent gets 401 on its next heartbeat or poll and must be enrolled again."""
    return await registry.revoke_machine_key.remote(principal, key_id)


@router.get("/v1/offers", response_model=list[api.Offer])
async def offers(principal: deps.CurrentPrincipal, registry: deps.Registry, response: Response) -> list[dict[str, Any]]:
    response.headers["Cache-Control"] = "no-store"
    return await registry.list_offers.remote()
