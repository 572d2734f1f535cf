"""The web console's routes: pages and htmx fragments over the same actor calls the /v1 routes make."""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Annotated

import pydantic
from fastapi import APIRouter, FastAPI, Form, Query, Request, Response
from fastapi import Path as FastApiPath
from fastapi.responses import HTMLResponse, RedirectResponse

from dcl_core import domain, ids, quota_limits
from dcl_core.cluster_spec import ClusterSpec
from serve_app import actor_handles, deps
from serve_app.console import charts, view
from serve_app.console import session as sess
from serve_app.routes_clusters import ClusterId

router = APIRouter(include_in_schema=False)

# Every asset the pages use comes from the package: no CDN (operators' networks may have no internet).
STATIC_TYPES = {"htmx.min.js": "text/javascript", "console.js": "text/javascript", "console.css": "text/css"}
DURATIONS = [
    (900, "15 min"),
    (1800, "30 min"),
    (3600, "1 hour"),
    (7200, "2 hours"),
    (21_600, "6 hours"),
    (86_400, "1 day"),
    (604_800, "7 days"),
]
MAX_QUOTA_ROWS = 200  # buyers whose quota the admin view shows, one actor call each
QUOTA_FIELDS = ("max_clusters", "max_gpus", "max_cpus", "max_gpu_hours")
USABLE = (domain.ClusterStatus.RUNNING.value, domain.ClusterStatus.DEGRADED.value)


def install(app: FastAPI) -> None:
    """Mounts the console on the API's app: its routes and the rendering of its errors."""
    app.include_router(router)
    app.add_exception_handler(view.ConsoleError, view.console_error)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


# --- sign-in ----------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, session: sess.OptionalSession) -> Response:
    if session is not None:
        return RedirectResponse("/", status_code=303)
    return view.render(request, "login.html", None)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    registry: deps.Registry,
    client: deps.ClientAddress,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
) -> Response:
    """The same sign-in as POST /v1/token (its limits included); the token goes into the console's cookie."""
    sess.check_origin(request)
    try:
        answer = await view.call(registry.login.remote(username, password, client))
    except view.ConsoleError as exc:
        return view.render(
            request, "login.html", None, status_code=exc.status_code, message=exc.message, username=username
        )
    response = RedirectResponse("/", status_code=303)
    sess.set_cookie(response, request, answer["access_token"], int(answer["expires_in"]))
    return response


@router.post("/logout")
async def logout(session: sess.ActingSession) -> Response:
    response = Response(status_code=204, headers={"HX-Redirect": sess.LOGIN_PATH})
    sess.clear_cookie(response)
    return response


# --- pages ------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, session: sess.Session, registry: deps.Registry) -> HTMLResponse:
    role = session.principal.role
    if role is domain.Role.BUYER:
        offers = await view.call(registry.list_offers.remote())
        models = sorted({o["gpu_model"] for o in offers if o["gpu_model"]})
        return view.render(
            request, "buyer.html", session, gpu_models=models, durations=DURATIONS, windows=list(charts.WINDOWS)
        )
    name = "provider.html" if role is domain.Role.PROVIDER else "admin.html"
    return view.render(request, name, session, windows=list(charts.WINDOWS))


@router.get("/console/clusters/{cluster_id}", response_class=HTMLResponse)
async def cluster_page(request: Request, cluster_id: ClusterId, session: sess.Session) -> HTMLResponse:
    return view.render(request, "cluster.html", session, cluster_id=cluster_id, durations=DURATIONS)


# --- fragments --------------------------------------------------------------------------


@router.get("/console/offers", response_class=HTMLResponse)
async def offers_fragment(
    request: Request,
    session: sess.Session,
    registry: deps.Registry,
    gpu_model: Annotated[str, Query(max_length=64)] = "",
    min_gpus: Annotated[str, Query(max_length=16)] = "",
    max_price: Annotated[str, Query(max_length=16)] = "",
    gpu_only: bool = False,
) -> HTMLResponse:
    """The marketplace (GET /v1/offers), filtered for display; an empty or unreadable filter filters nothing."""
    least_gpus, price_cap = _number(min_gpus) or 0, _number(max_price)
    offers = await view.call(registry.list_offers.remote())
    shown = [
        o
        for o in offers
        if (not gpu_model or o["gpu_model"] == gpu_model)
        and o["gpus"] >= least_gpus
        and (price_cap is None or o["gpu_model"] is None or o["price_per_gpu_hour_min"] <= price_cap)
        and (not gpu_only or o["gpu_model"] is not None)
    ]
    return view.render(request, "_offers.html", session, offers=shown, total=len(offers))


@router.get("/console/clusters", response_class=HTMLResponse)
async def clusters_fragment(request: Request, session: sess.Session, clusters: deps.Clusters) -> HTMLResponse:
    rows = await view.call(clusters.list_clusters.remote(session.principal))
    rows.sort(key=lambda c: c["created_at"], reverse=True)
    return view.render(request, "_clusters.html", session, clusters=rows)


async def _status_fragment(
    request: Request, session: sess.ConsoleSession, clusters: actor_handles.Clusters, cluster_id: str
) -> HTMLResponse:
    cluster, events = await asyncio.gather(
        view.call(clusters.get_cluster.remote(session.principal, cluster_id)),
        view.call(clusters.cluster_events.remote(session.principal, cluster_id, 0)),
    )
    connection = None
    if cluster["status"] in USABLE and session.principal.role is domain.Role.BUYER:
        connection = await view.call(clusters.connection.remote(session.principal, cluster_id))
    return view.render(
        request,
        "_cluster_status.html",
        session,
        cluster=cluster,
        events=events,
        connection=connection,
        durations=DURATIONS,
        active=domain.ClusterStatus(cluster["status"]).is_active(),
    )


@router.get("/console/clusters/{cluster_id}/status", response_class=HTMLResponse)
async def cluster_status_fragment(
    request: Request, cluster_id: ClusterId, session: sess.Session, clusters: deps.Clusters
) -> HTMLResponse:
    """Status, nodes, every event so far and (once it runs) the connection details; polls itself while active."""
    return await _status_fragment(request, session, clusters, cluster_id)


@router.get("/console/machines", response_class=HTMLResponse)
async def machines_fragment(request: Request, session: sess.Session, registry: deps.Registry) -> HTMLResponse:
    machines = await view.call(registry.list_machines.remote(session.principal))
    machines.sort(key=lambda m: (m["status"] != "online", m["name"]))
    return view.render(request, "_machines.html", session, machines=machines)


@router.get("/console/machine-keys", response_class=HTMLResponse)
async def machine_keys_fragment(request: Request, session: sess.Session, registry: deps.Registry) -> HTMLResponse:
    keys = await view.call(registry.list_machine_keys.remote(session.principal))
    return view.render(
        request, "_machine_keys.html", session, keys=sorted(keys, key=lambda k: (not k["active"], k["id"]))
    )


@router.post("/console/machine-keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke_machine_key(
    request: Request,
    key_id: Annotated[str, FastApiPath(pattern=ids.AGENT_KEY_ID_PATTERN)],
    session: sess.ActingSession,
    registry: deps.Registry,
) -> HTMLResponse:
    await view.call(registry.revoke_machine_key.remote(session.principal, key_id))
    return await machine_keys_fragment(request, session, registry)


@router.get("/console/accounts", response_class=HTMLResponse)
async def accounts_fragment(
    request: Request, session: sess.Session, registry: deps.Registry, clusters: deps.Clusters
) -> HTMLResponse:
    accounts = await view.call(registry.list_accounts.remote(session.principal))
    buyers = [a for a in accounts if a["role"] == domain.Role.BUYER.value][:MAX_QUOTA_ROWS]
    quotas = await asyncio.gather(*(view.call(clusters.get_quota.remote(session.principal, a["id"])) for a in buyers))
    return view.render(
        request,
        "_accounts.html",
        session,
        accounts=accounts,
        quotas={q["account_id"]: q for q in quotas},
        limits=QUOTA_FIELDS,
    )


@router.post("/console/accounts/{account_id}/quota", response_class=HTMLResponse)
async def set_quota(
    request: Request,
    account_id: Annotated[int, FastApiPath(ge=1, le=2**63 - 1)],
    session: sess.ActingSession,
    registry: deps.Registry,
    clusters: deps.Clusters,
) -> HTMLResponse:
    """Admins: a buyer's limits; a field left empty takes the platform's default."""
    form = await request.form()
    fields = {name: str(form.get(name, "")).strip() or None for name in QUOTA_FIELDS}
    try:
        overrides = quota_limits.QuotaOverrides.model_validate(fields)
    except pydantic.ValidationError as exc:
        raise view.invalid_form(exc) from None
    await view.call(clusters.set_quota.remote(session.principal, account_id, overrides.model_dump()))
    return await accounts_fragment(request, session, registry, clusters)


@router.get("/console/usage", response_class=HTMLResponse)
async def usage_fragment(
    request: Request,
    session: sess.Session,
    clusters: deps.Clusters,
    window: Annotated[str, Query(pattern="^(" + "|".join(charts.WINDOWS) + ")$")] = charts.DEFAULT_WINDOW,
) -> HTMLResponse:
    """Spend (buyers, admins) or earnings (providers) per hour or day: one GET /v1/usage call per bucket."""
    now = time.time()
    buckets = charts.buckets(window, now)
    first = buckets[0].start
    per_bucket, whole = await asyncio.gather(
        asyncio.gather(*(view.call(clusters.usage.remote(session.principal, b.start, b.end)) for b in buckets)),
        view.call(clusters.usage.remote(session.principal, first, now)),
    )
    money = "earnings" if whole["role"] == "provider" else "cost"
    title = ("Earnings" if money == "earnings" else "Spend") + f" per {'hour' if window == '24h' else 'day'}"
    svg = charts.bar_chart([b.label for b in buckets], [u["total"][money] for u in per_bucket], title=title)
    return view.render(
        request, "_usage.html", session, svg=svg, usage=whole, money=money, window=window, windows=list(charts.WINDOWS)
    )


# --- actions (same-origin, CSRF token) ---------------------------------------------------


@router.post("/console/clusters", response_class=HTMLResponse)
async def create_cluster(
    request: Request,
    session: sess.ActingSession,
    clusters: deps.Clusters,
    num_workers: Annotated[int, Form()],
    duration_s: Annotated[int, Form()],
    gpus_per_worker: Annotated[int, Form()] = 0,
    cpus_per_worker: Annotated[int, Form()] = 1,
    gpu_model: Annotated[str, Form(max_length=64)] = "",
    name: Annotated[str, Form(max_length=64)] = "",
    max_price_per_gpu_hour: Annotated[str, Form(max_length=32)] = "",
    max_price_per_cpu_hour: Annotated[str, Form(max_length=32)] = "",
    min_reliability: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """POST /v1/clusters from the form: the same spec model, the same actor call; then its page. A number left
    empty is "any" (None), as a field left out of the API's body."""
    try:
        spec = ClusterSpec.model_validate(
            {
                "num_workers": num_workers,
                "gpus_per_worker": gpus_per_worker,
                "cpus_per_worker": cpus_per_worker,
                "duration_s": duration_s,
                "gpu_model": gpu_model or None,
                "name": name or None,
                "max_price_per_gpu_hour": max_price_per_gpu_hour.strip() or None,
                "max_price_per_cpu_hour": max_price_per_cpu_hour.strip() or None,
                "min_reliability": min_reliability.strip() or None,
            }
        )
    except pydantic.ValidationError as exc:
        raise view.invalid_form(exc) from None
    cluster = await view.call(clusters.create_cluster.remote(session.principal, spec))
    return Response(status_code=204, headers={"HX-Redirect": f"/console/clusters/{cluster['id']}"})


@router.post("/console/clusters/{cluster_id}/extend", response_class=HTMLResponse)
async def extend_cluster(
    request: Request,
    cluster_id: ClusterId,
    session: sess.ActingSession,
    clusters: deps.Clusters,
    duration_s: Annotated[int, Form(ge=1, le=90 * 86_400)],
) -> HTMLResponse:
    await view.call(clusters.extend_cluster.remote(session.principal, cluster_id, duration_s))
    return await _status_fragment(request, session, clusters, cluster_id)


@router.post("/console/clusters/{cluster_id}/delete", response_class=HTMLResponse)
async def delete_cluster(
    request: Request, cluster_id: ClusterId, session: sess.ActingSession, clusters: deps.Clusters
) -> HTMLResponse:
    await view.call(clusters.delete_cluster.remote(session.principal, cluster_id))
    return await _status_fragment(request, session, clusters, cluster_id)


# --- assets -----------------------------------------------------------------------------

_STATIC_CACHE: dict[str, bytes] = {}


@router.get("/console/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC_TYPES:
        raise view.ConsoleError(404, f"no such console asset: {name}")
    if name not in _STATIC_CACHE:
        _STATIC_CACHE[name] = resources.files("serve_app.console").joinpath("static", name).read_bytes()
    return Response(
        _STATIC_CACHE[name],
        media_type=STATIC_TYPES[name],
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
