"""The platform API: one FastAPI app served by one Ray Serve ingress deployment."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve

from actors import actor_classes
from actors.clusters import cluster_api
from actors.db import cluster_store
from actors.settings import PlatformSettings
from dcl_core import api, protocol
from dcl_core import errors as errors_core
from serve_app import (
    actor_handles,
    api_metrics,
    batching,
    deps,
    errors,
    head_proxy,
    hot_routes,
    input_policy,
    listener,
    routes_accounts,
    routes_clusters,
    routes_machines,
)
from serve_app.console import routes as console

logger = logging.getLogger(__name__)


HEALTH_PROBE_TIMEOUT_S = 5.0


async def _start_status(name: str, actor: actor_handles.ActorView) -> dict[str, Any]:
    """An actor's start status, or why it could not be asked: health never raises, never waits long."""
    try:
        return await asyncio.wait_for(actor.start_status.remote(), timeout=HEALTH_PROBE_TIMEOUT_S)
    except TimeoutError:
        return {"actor": name, "ready": False, "last_error": f"no answer within {HEALTH_PROBE_TIMEOUT_S:.0f} s"}
    except Exception as exc:  # an actor restarting or not created yet
        return {"actor": name, "ready": False, "last_error": f"unavailable ({type(exc).__name__})"}


def _describe(status: dict[str, Any]) -> str:
    text = str(status["actor"])
    if status.get("attempts"):
        text += f" (start attempt {status['attempts']})"
    if status.get("last_error"):
        text += f": {status['last_error']}"
    return text


# While agents beat often, at most one registry call per 10 ms: batches of ~10 at 1,000 beats/s instead of 2-3
# (an actor call costs more than the registry's work for a beat); an agent waits 10 ms more at worst.
HEARTBEAT_GATHER_S = 0.01


def create_app(
    registry_handle: object,
    clusters_handle: object,
    *,
    trusted_proxy_hops: int = 0,
    cluster_db: Callable[[], cluster_store.ClusterStore | None] = lambda: None,
    tls_ca_pem: str | None = None,
) -> FastAPI:
    """The FastAPI app, bound to the control-plane actor handles it forwards to (or stand-ins with the same
    `method.remote(...)`; serve_app.actor_handles types their methods). cluster_db: the platform's
    database once this replica can reach it: cluster reads are then answered from it here, without the
    ClusterManager's hop (the same queries and view: actors.clusters.cluster_api.read_clusters). tls_ca_pem: the
    certificate clients pin, published at api.TLS_CA_PATH."""
    app = FastAPI(
        title="decentralized-clusters",
        version="0.1.0",
        description="GPU cluster marketplace on Ray: providers offer machines, buyers lease Ray clusters.",
        dependencies=[Depends(input_policy.check_request)],
    )
    registry = actor_handles.Registry(registry_handle)
    clusters = actor_handles.Clusters(clusters_handle)
    # Read back, typed, through serve_app.deps (and by hot_routes for its two routes).
    app.state.registry = registry
    app.state.clusters = clusters
    # The hottest routes share actor calls (serve_app.batching): agents' heartbeats, and cluster reads.
    heartbeats: deps.HeartbeatBatcher = batching.Batcher(
        lambda beats: registry.heartbeats.remote(beats), gather_s=HEARTBEAT_GATHER_S
    )
    app.state.heartbeats = heartbeats

    async def read_clusters(reads: list[deps.ClusterRead]) -> list[dict[str, Any] | Exception]:
        db = cluster_db()
        if db is not None:
            return await cluster_api.read_clusters(db, reads)
        return await clusters.get_clusters.remote(reads)

    cluster_reads: deps.ClusterReadBatcher = batching.Batcher(read_clusters, coalesce=True)
    app.state.cluster_reads = cluster_reads
    app.state.tokens = None  # fetched from the registry on first use
    app.state.head_proxy = head_proxy.HeadProxy()  # buyers' dashboards and metrics (routes_clusters)
    app.state.trusted_proxy_hops = trusted_proxy_hops  # see deps.client_address
    # Innermost: the body cap and the latency metric wrap the hot routes as they wrap every route.
    app.add_middleware(hot_routes.HotRoutes, api_app=app)
    app.add_middleware(errors.BodySizeLimit)
    app.add_middleware(api_metrics.ApiLatency)
    errors.install(app)

    # The error answers each group of routes can give, so that the schema is truthful.
    def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
        return errors.documented(*errors.COMMON_ERRORS, *codes)

    app.include_router(routes_accounts.router, responses=answers(401, 403, 409, 429))
    app.include_router(routes_accounts.seed_router, responses=answers(401, 403, 409, 429))
    app.include_router(routes_machines.router, responses=answers(401, 403, 404))
    app.include_router(routes_clusters.router, responses=answers(401, 403, 404, 409))
    app.include_router(routes_clusters.proxy_router, responses=answers(401, 403, 404, 409, 502))
    app.include_router(routes_clusters.seed_router, responses=answers(401, 403, 404, 409))
    app.include_router(routes_clusters.node_router, responses=answers(401, 403, 404, 409))
    console.install(app)  # the web console at /

    @app.get(api.TLS_CA_PATH, tags=["health"], response_class=PlainTextResponse, responses=answers(404))
    async def tls_ca() -> PlainTextResponse:
        """The certificate authority clients pin (PEM): they check its SHA-256 against the fingerprint the
        operator gave them before trusting it. 404 on a platform without TLS of its own."""
        if tls_ca_pem is None:
            raise errors_core.NotFound("this platform serves no certificate authority of its own (no TLS, or none set)")
        return PlainTextResponse(tls_ca_pem, media_type="application/x-pem-file")

    @app.get("/healthz", tags=["health"], responses=answers(), response_model=None)
    async def healthz() -> JSONResponse | dict[str, str | int]:
        """200 once the control plane has recovered its state and answers; 503 naming what is still starting."""
        actors: dict[str, actor_handles.ActorView] = {"ProviderRegistry": registry, "ClusterManager": clusters}
        statuses = await asyncio.gather(*(_start_status(name, handle) for name, handle in actors.items()))
        starting = [a for a in statuses if not a["ready"]]
        if starting:
            return JSONResponse(
                {"detail": "starting: " + "; ".join(_describe(a) for a in starting), "actors": statuses},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        return {"status": "ok", "protocol": protocol.PROTOCOL_VERSION}  # the agents' protocol it speaks

    return app


class PlatformAPI:
    """The API's Serve replica: looks up (or creates) the actors and builds the app over their handles."""

    # Serve awaits an async constructor; mypy holds that __init__ returns None.
    async def __init__(self, settings_json: str):  # type: ignore[misc]
        settings = PlatformSettings.model_validate_json(settings_json)
        handles = actor_classes.ensure_actors(settings)
        # Built in the replica, so its state holds this replica's handles.
        self._app = create_app(
            handles[actor_classes.REGISTRY_NAME],
            handles[actor_classes.CLUSTER_MANAGER_NAME],
            trusted_proxy_hops=settings.trusted_proxy_hops,
            cluster_db=_database_here(settings),
            tls_ca_pem=settings.tls_ca_pem(),
        )
        self._listener: listener.Listener | None = None
        if settings.listen_port is not None:  # the replica serves HTTP itself, without Serve's proxy
            self._listener = listener.Listener(
                self._app,
                settings.listen_host,
                settings.listen_port,
                ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
                ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
            )
            await self._listener.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    async def __del__(self) -> None:
        # Serve's graceful shutdown of the replica: stop taking connections first.
        if self._listener is not None:
            await self._listener.stop()


def _database_here(settings: PlatformSettings) -> Callable[[], cluster_store.ClusterStore | None]:
    """The platform's database once this node reaches it: PostgreSQL from any node; the SQLite file where it is
    (the head), once the actors have made it."""
    found: cluster_store.ClusterStore | None = None

    def database() -> cluster_store.ClusterStore | None:
        nonlocal found
        if found is None and (settings.shared_database or Path(settings.db_location).exists()):
            found = cluster_store.ClusterStore(settings.db_location)
        return found

    return database


# Serve's decorators applied as calls (a form Serve's docs show too): mypy types a decorated class as the class
# itself, never as the Deployment made of it. Long polls from agents and launcher commands hold requests open:
# allow many at once.
PlatformDeployment = serve.deployment(
    name=protocol.API_DEPLOYMENT, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=2000
)(serve.ingress()(PlatformAPI))


def build_app(args: dict[str, Any]) -> serve.Application:
    """Entry point named in platform/serve.yaml; args: PlatformSettings fields (state_dir required)."""
    settings = PlatformSettings.model_validate(args)
    return PlatformDeployment.bind(settings.model_dump_json())
