"""Accounts and sign-in: the v1 routes and the seed's compatible paths."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, status

from dcl_core import api, domain
from serve_app import deps

router = APIRouter(tags=["accounts"])
seed_router = APIRouter(tags=["seed-compatible"])

# The form fields are bounded so that a huge field cannot reach bcrypt.
FormUsername = Annotated[str, Form(max_length=64, description="Account username")]
FormPassword = Annotated[str, Form(max_length=256, description="Account password")]


@router.post("/v1/accounts", status_code=status.HTTP_201_CREATED, response_model=api.AccountPublic)
async def create_account(body: api.AccountCreate, registry: deps.Registry, by: deps.OptionalPrincipal):
    return await registry.create_account.remote(body.username, body.password, body.role, by)


@router.post("/v1/token", response_model=api.Token)
async def token(username: FormUsername, password: FormPassword, registry: deps.Registry):
    """OAuth2 password flow (form-encoded `username` and `password`)."""
    return await registry.login.remote(username, password)


@router.get("/v1/accounts/me", response_model=api.AccountPublic)
async def me(principal: deps.CurrentPrincipal, registry: deps.Registry):
    return await registry.get_account.remote(principal)


@seed_router.post("/register", status_code=status.HTTP_201_CREATED, response_model=api.AccountPublic)
async def seed_register(body: api.SeedRegister, registry: deps.Registry):
    """The seed's provider sign-up."""
    return await registry.create_account.remote(body.username, body.password, domain.Role.PROVIDER, None)


@seed_router.post("/token", response_model=api.Token)
async def seed_token(username: FormUsername, password: FormPassword, registry: deps.Registry):
    return await registry.login.remote(username, password)


@seed_router.get("/providers/me", response_model=api.AccountPublic)
async def seed_me(principal: Annotated[object, Depends(deps.current_principal)], registry: deps.Registry):
    return await registry.get_account.remote(principal)
