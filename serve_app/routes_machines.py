"""Provider machines: registration, heartbeats, the agents' work channel, and the offers view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from serve_app import deps
from dcl_core import api, ids

router = APIRouter(tags=["machines"])

MachineId = Annotated[str, Path(pattern=ids.MACHINE_ID_PATTERN, description="Machine id, e.g. m-0123456789ab")]


@router.post("/v1/machines", status_code=status.HTTP_201_CREATED, response_model=api.MachineRegistered)
async def register_machine(body: api.MachineRegister, principal: deps.ProviderPrincipal, registry: deps.Registry):
    """Idempotent per (provider, machine_key): the agent re-registers the same machine after a restart."""
    return await registry.register_machine.remote(principal, body.model_dump(mode="json"))


@router.get("/v1/machines", response_model=list[api.MachinePublic])
async def list_machines(principal: deps.ProviderOrAdmin, registry: deps.Registry):
    return await registry.list_machines.remote(principal)


@router.get("/v1/machines/{machine_id}", response_model=api.MachinePublic)
async def get_machine(machine_id: MachineId, principal: deps.ProviderOrAdmin, registry: deps.Registry):
    return await registry.get_machine.remote(principal, machine_id)


@router.post("/v1/machines/{machine_id}/heartbeat", response_model=api.HeartbeatAck)
async def heartbeat(machine_id: MachineId, body: api.Heartbeat, principal: deps.ProviderPrincipal,
                    registry: deps.Registry):
    return await registry.heartbeat.remote(principal, machine_id, body.usage.model_dump(mode="json"), body.leases)


@router.delete("/v1/machines/{machine_id}", response_model=api.MachinePublic)
async def leave(machine_id: MachineId, principal: deps.ProviderPrincipal, registry: deps.Registry):
    """The agent's graceful leave: the machine is marked gone and gets no new leases."""
    return await registry.leave.remote(principal, machine_id)


@router.get("/v1/machines/{machine_id}/work", response_model=api.WorkBatch)
async def next_work(machine_id: MachineId, principal: deps.ProviderPrincipal, registry: deps.Registry,
                    wait_s: Annotated[float, Query(ge=0, le=30, description="Long-poll wait")] = 20.0):
    """Long poll: the agent's channel for node leases and commands."""
    return {"items": await registry.next_work.remote(principal, machine_id, wait_s)}


@router.post("/v1/machines/{machine_id}/results/{item_id}")
async def work_result(machine_id: MachineId, item_id: Annotated[str, Path(pattern=ids.WORK_ITEM_ID_PATTERN)],
                      body: api.WorkResult, principal: deps.ProviderPrincipal, registry: deps.Registry):
    """The agent's answer to a work item (a lease opened, a command's exit code and output)."""
    return await registry.complete_work.remote(principal, machine_id, item_id, body.model_dump())


@router.get("/v1/offers", response_model=list[api.Offer])
async def offers(principal: deps.CurrentPrincipal, registry: deps.Registry, response: Response):
    response.headers["Cache-Control"] = "no-store"
    return await registry.list_offers.remote()
