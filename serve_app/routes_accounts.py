"""Accounts and sign-in: the v1 routes and the seed's compatible paths."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, status

from actors import domain
from serve_app import deps, models

router = APIRouter(tags=["accounts"])
seed_router = APIRouter(tags=["seed-compatible"])

# The form fields are bounded so that a huge field cannot reach bcrypt.
FormUsername = Annotated[str, Form(max_length=64, description="Account username")]
FormPassword = Annotated[str, Form(max_length=256, description="Account password")]


@router.post("/v1/accounts", status_code=status.HTTP_201_CREATED, response_model=models.AccountPublic)
async def create_account(body: models.AccountCreate, registry: deps.Registry, by: deps.OptionalPrincipal,
                         client: deps.ClientAddress):
    """Sign-ups are limited per client address and overall (429 naming the limit)."""
    return await registry.create_account.remote(body.username, body.password, body.role, by, client)


@router.post("/v1/token", response_model=models.Token)
async def token(username: FormUsername, password: FormPassword, registry: deps.Registry,
                client: deps.ClientAddress):
    """OAuth2 password flow (form-encoded `username` and `password`). Failed sign-ins are limited per
    username and per client address, and password checks overall (429 naming the limit)."""
    return await registry.login.remote(username, password, client)


@router.get("/v1/accounts/me", response_model=models.AccountPublic)
async def me(principal: deps.CurrentPrincipal, registry: deps.Registry):
    return await registry.get_account.remote(principal)


@seed_router.post("/register", status_code=status.HTTP_201_CREATED, response_model=models.AccountPublic)
async def seed_register(body: models.SeedRegister, registry: deps.Registry, client: deps.ClientAddress):
    """The seed's provider sign-up."""
    return await registry.create_account.remote(body.username, body.password, domain.Role.PROVIDER, None, client)


@seed_router.post("/token", response_model=models.Token)
async def seed_token(username: FormUsername, password: FormPassword, registry: deps.Registry,
                     client: deps.ClientAddress):
    return await registry.login.remote(username, password, client)


@seed_router.get("/providers/me", response_model=models.AccountPublic)
async def seed_me(principal: Annotated[object, Depends(deps.current_principal)], registry: deps.Registry):
    return await registry.get_account.remote(principal)
