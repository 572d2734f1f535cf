"""Accounts and sign-in: the v1 routes and the seed's compatible paths."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, status

from dcl_core import api, domain
from serve_app import deps, errors

router = APIRouter(tags=["accounts"])
seed_router = APIRouter(tags=["seed-compatible"])

# The form fields are bounded so that a huge field cannot reach bcrypt.
FormUsername = Annotated[str, Form(max_length=64, description="Account username")]
FormPassword = Annotated[str, Form(max_length=256, description="Account password")]


@router.post("/v1/accounts", status_code=status.HTTP_201_CREATED, response_model=api.AccountPublic)
async def create_account(
    body: api.AccountCreate, registry: deps.Registry, by: deps.OptionalPrincipal, client: deps.ClientAddress
) -> dict[str, Any]:
    """Sign-ups are limited per client address and overall (429 naming the limit)."""
    return await registry.create_account.remote(body.username, body.password, body.role, by, client)


@router.get("/v1/accounts", response_model=list[api.AccountPublic])
async def list_accounts(principal: deps.AdminPrincipal, registry: deps.Registry) -> list[dict[str, Any]]:
    """Every account (admins only)."""
    return await registry.list_accounts.remote(principal)


@router.post("/v1/token", response_model=api.Token)
async def token(
    username: FormUsername, password: FormPassword, registry: deps.Registry, client: deps.ClientAddress
) -> dict[str, Any]:
    """OAuth2 password flow (form-encoded `username` and `password`). Failed sign-ins are limited per
    username and per client address, and password checks overall (429 naming the limit)."""
    return await registry.login.remote(username, password, client)


@router.get("/v1/accounts/me", response_model=api.AccountPublic)
async def me(principal: deps.CurrentPrincipal, registry: deps.Registry) -> dict[str, Any]:
    return await registry.get_account.remote(principal)


AccountId = Annotated[int, Path(ge=1, le=2**62, description="Account id (GET /v1/accounts/me shows yours)")]


@router.get("/v1/accounts/{account_id}/quota", response_model=api.QuotaPublic, responses=errors.documented(404))
async def get_quota(account_id: AccountId, principal: deps.CurrentPrincipal, clusters: deps.Clusters) -> dict[str, Any]:
    """The account's limits and what it uses of them: the account itself, or an admin."""
    return await clusters.get_quota.remote(principal, account_id)


@router.put("/v1/accounts/{account_id}/quota", response_model=api.QuotaPublic, responses=errors.documented(404))
async def set_quota(
    account_id: AccountId, body: api.QuotaUpdate, principal: deps.AdminPrincipal, clusters: deps.Clusters
) -> dict[str, Any]:
    """Admins: replaces a buyer account's limits; a field left out or null takes the platform's default."""
    return await clusters.set_quota.remote(principal, account_id, body.model_dump())


@seed_router.post("/register", status_code=status.HTTP_201_CREATED, response_model=api.AccountPublic)
async def seed_register(body: api.SeedRegister, registry: deps.Registry, client: deps.ClientAddress) -> dict[str, Any]:
    """The seed's provider sign-up."""
    return await registry.create_account.remote(body.username, body.password, domain.Role.PROVIDER, None, client)


@seed_router.post("/token", response_model=api.Token)
async def seed_token(
    username: FormUsername, password: FormPassword, registry: deps.Registry, client: deps.ClientAddress
) -> dict[str, Any]:
    return await registry.login.remote(username, password, client)


@seed_router.get("/providers/me", response_model=api.AccountPublic)
async def seed_me(principal: deps.CurrentPrincipal, registry: deps.Registry) -> dict[str, Any]:
    return await registry.get_account.remote(principal)
