"""Auth dependencies: the calling account, verified in the replica from the token alone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from actors.access import agent_keys, auth
from actors.machines import registry as registry_mod
from dcl_core import domain, errors
from serve_app import actor_handles, batching
from serve_app import head_proxy as head_proxy_mod

_bearer = HTTPBearer(auto_error=False, description="A JWT from POST /v1/token")


async def token_issuer(request: Request) -> auth.TokenIssuer:
    state = request.app.state
    if state.tokens is None:
        # Fetched once per replica; every later request verifies locally, with no actor hop.
        handles: actor_handles.Registry = await registry(request)
        state.tokens = auth.TokenIssuer(await handles.signing_secret.remote())
    tokens: auth.TokenIssuer = state.tokens
    return tokens


async def _verified(request: Request, credentials: HTTPAuthorizationCredentials | None) -> auth.Principal:
    if credentials is None:
        raise errors.Unauthenticated("missing bearer token: sign in at POST /v1/token")
    return (await token_issuer(request)).verify(credentials.credentials)


async def optional_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> auth.Principal | None:
    if credentials is None:
        return None
    principal = await _verified(request, credentials)
    auth.check_account_token(principal)
    return principal


async def current_principal(principal: Annotated[auth.Principal | None, Depends(optional_principal)]) -> auth.Principal:
    if principal is None:
        raise errors.Unauthenticated("missing bearer token: sign in at POST /v1/token")
    return principal


def require_role(*roles: domain.Role) -> Callable[[auth.Principal], Awaitable[auth.Principal]]:
    async def check(principal: Annotated[auth.Principal, Depends(current_principal)]) -> auth.Principal:
        auth.check_role(principal, *roles)
        return principal

    return check


async def node_provider_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> auth.Principal:
    """The credential of one cluster's node provider (or an admin): the only callers of the node routes."""
    principal = await _verified(request, credentials)
    if principal.cluster_id is None and principal.role is not domain.Role.ADMIN:
        raise errors.Forbidden("node routes take the cluster's node-provider credential, not a sign-in token")
    return principal


async def machine_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> auth.Principal | agent_keys.MachineKey:
    """A machine's routes: its agent's key (checked by the registry, with the machine's work), or the
    sign-in of a provider (who may only enroll its machines and look at them)."""
    if credentials is not None and agent_keys.looks_like_key(credentials.credentials):
        key = agent_keys.parse(credentials.credentials)
        if key is None:
            raise errors.Unauthenticated("malformed agent key: it reads dcm.<machine id>.<secret>")
        return key
    principal = await optional_principal(request, credentials)
    if principal is None:
        raise errors.Unauthenticated("missing bearer token: an agent key, or a provider's sign-in from POST /v1/token")
    auth.check_role(principal, domain.Role.PROVIDER)
    return principal


# Who may read and manage a cluster (serve_app.hot_routes too), as the role itself says.
BUYER_OR_ADMIN = tuple(role for role in domain.Role if role.may_hold_clusters())

OptionalPrincipal = Annotated[auth.Principal | None, Depends(optional_principal)]
CurrentPrincipal = Annotated[auth.Principal, Depends(current_principal)]
ProviderPrincipal = Annotated[auth.Principal, Depends(require_role(domain.Role.PROVIDER))]
ProviderOrAdmin = Annotated[auth.Principal, Depends(require_role(domain.Role.PROVIDER, domain.Role.ADMIN))]
BuyerPrincipal = Annotated[auth.Principal, Depends(require_role(domain.Role.BUYER))]
AdminPrincipal = Annotated[auth.Principal, Depends(require_role(domain.Role.ADMIN))]
BuyerOrAdmin = Annotated[auth.Principal, Depends(require_role(*BUYER_OR_ADMIN))]
NodeProviderPrincipal = Annotated[auth.Principal, Depends(node_provider_principal)]
MachineCaller = Annotated[auth.Principal | agent_keys.MachineKey, Depends(machine_caller)]


async def client_address(request: Request) -> str | None:
    """The caller's address for rate limits: the TCP peer, or, behind `trusted_proxy_hops` proxies
    (a setting), the X-Forwarded-For entry the outermost of them appended. Never what a client wrote."""
    peer = request.client.host if request.client else None
    hops = getattr(request.app.state, "trusted_proxy_hops", 0)
    if hops <= 0:
        return peer
    forwarded = [a.strip() for a in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if a.strip()]
    # Each proxy appends the address it saw, so the last `hops` entries are our proxies' own words.
    return forwarded[-hops] if len(forwarded) >= hops else peer


ClientAddress = Annotated[str | None, Depends(client_address)]


# What serve_app.app.create_app put in the app's state, read back with its type (Starlette's State has none).


async def registry(request: Request) -> actor_handles.Registry:
    view: actor_handles.Registry = request.app.state.registry
    return view


async def clusters(request: Request) -> actor_handles.Clusters:
    view: actor_handles.Clusters = request.app.state.clusters
    return view


async def head_proxy(request: Request) -> head_proxy_mod.HeadProxy:
    proxy: head_proxy_mod.HeadProxy = request.app.state.head_proxy
    return proxy


Registry = Annotated[actor_handles.Registry, Depends(registry)]
Clusters = Annotated[actor_handles.Clusters, Depends(clusters)]
HeadProxy = Annotated[head_proxy_mod.HeadProxy, Depends(head_proxy)]

# A heartbeat as the registry takes it: the caller, the machine id, its usage (JSON) and the leases it holds.
Beat = tuple[registry_mod.MachineCaller, str, dict[str, Any], Sequence[str]]
# A cluster read: who asks, and which cluster.
ClusterRead = tuple[auth.Principal, str]
HeartbeatBatcher = batching.Batcher[Beat, dict[str, Any]]
ClusterReadBatcher = batching.Batcher[ClusterRead, dict[str, Any]]


async def heartbeats(request: Request) -> HeartbeatBatcher:
    batcher: HeartbeatBatcher = request.app.state.heartbeats
    return batcher


async def cluster_reads(request: Request) -> ClusterReadBatcher:
    batcher: ClusterReadBatcher = request.app.state.cluster_reads
    return batcher


Heartbeats = Annotated[HeartbeatBatcher, Depends(heartbeats)]
ClusterReads = Annotated[ClusterReadBatcher, Depends(cluster_reads)]
