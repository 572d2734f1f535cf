"""The control-plane actors as the API calls them: Ray's handles, each method typed as the plain class that serves it.

Ray's `ActorHandle` types no method (`handle.login` is whatever the actor has). A view names the methods the API
calls, each from the plain class's own method (`actors.machines.registry.ProviderRegistry.login`), so a call with
the wrong arguments, or to a method the actor lacks, fails the type check, and no signature is written twice. At
run time `view.login` is the handle's own `login`: `.remote(...)` starts the call; awaiting its ref answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, cast

from actors.clusters import cluster_api, node_api
from actors.machines import registry

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class RemoteMethod(Protocol[P, R_co]):
    """A method of an actor handle: `.remote(...)` sends the call; the ref it returns is awaited for the answer."""

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R_co]: ...


class _Method(Generic[P, R]):
    """One method of the actor, typed as `method` of the plain class (less `self`)."""

    def __init__(self, method: Callable[Concatenate[Any, P], Awaitable[R]]) -> None:
        self.name = method.__name__

    def __set_name__(self, owner: type, attribute: str) -> None:
        if attribute != self.name:  # `login = _Method(X.get_account)` would type one method and call another
            raise TypeError(f"{owner.__name__}.{attribute} is typed as {self.name}: the names must be the same")

    def __get__(self, view: ActorView, owner: type[ActorView] | None = None) -> RemoteMethod[P, R]:
        # The one place the handle's untyped methods get their types: the plain class's, by name.
        return cast("RemoteMethod[P, R]", getattr(view.handle, self.name))


class _EveryActor(Protocol):
    """What actors.actor_classes.thin_actor adds to every actor, beside the plain class's methods."""

    async def start_status(self) -> dict[str, Any]: ...


class ActorView:
    """An actor handle (or a stand-in with the same `method.remote(...)` shape), seen through typed methods."""

    start_status = _Method(_EveryActor.start_status)

    def __init__(self, handle: object) -> None:
        self.handle = handle


class Registry(ActorView):
    """The ProviderRegistry actor (actors.machines.registry)."""

    signing_secret = _Method(registry.ProviderRegistry.signing_secret)
    create_account = _Method(registry.ProviderRegistry.create_account)
    login = _Method(registry.ProviderRegistry.login)
    get_account = _Method(registry.ProviderRegistry.get_account)
    list_accounts = _Method(registry.ProviderRegistry.list_accounts)
    register_machine = _Method(registry.ProviderRegistry.register_machine)
    heartbeats = _Method(registry.ProviderRegistry.heartbeats)
    leave = _Method(registry.ProviderRegistry.leave)
    list_machines = _Method(registry.ProviderRegistry.list_machines)
    get_machine = _Method(registry.ProviderRegistry.get_machine)
    list_offers = _Method(registry.ProviderRegistry.list_offers)
    next_work = _Method(registry.ProviderRegistry.next_work)
    complete_work = _Method(registry.ProviderRegistry.complete_work)
    list_machine_keys = _Method(registry.ProviderRegistry.list_machine_keys)
    revoke_machine_key = _Method(registry.ProviderRegistry.revoke_machine_key)


class Clusters(ActorView):
    """The ClusterManager actor: its buyer API (actors.clusters.cluster_api) and node-provider API (node_api)."""

    create_cluster = _Method(cluster_api.BuyerApi.create_cluster)
    get_quota = _Method(cluster_api.BuyerApi.get_quota)
    set_quota = _Method(cluster_api.BuyerApi.set_quota)
    list_clusters = _Method(cluster_api.BuyerApi.list_clusters)
    get_cluster = _Method(cluster_api.BuyerApi.get_cluster)
    get_clusters = _Method(cluster_api.BuyerApi.get_clusters)
    delete_cluster = _Method(cluster_api.BuyerApi.delete_cluster)
    cluster_events = _Method(cluster_api.BuyerApi.cluster_events)
    cluster_logs = _Method(cluster_api.BuyerApi.cluster_logs)
    cluster_log = _Method(cluster_api.BuyerApi.cluster_log)
    job_log = _Method(cluster_api.BuyerApi.job_log)
    connection = _Method(cluster_api.BuyerApi.connection)
    proxy_target = _Method(cluster_api.BuyerApi.proxy_target)
    extend_cluster = _Method(cluster_api.BuyerApi.extend_cluster)
    usage = _Method(cluster_api.BuyerApi.usage)
    list_nodes = _Method(node_api.NodeProviderApi.list_nodes)
    create_nodes = _Method(node_api.NodeProviderApi.create_nodes)
    set_node_tags = _Method(node_api.NodeProviderApi.set_node_tags)
    terminate_node = _Method(node_api.NodeProviderApi.terminate_node)
    exec_on_node = _Method(node_api.NodeProviderApi.exec_on_node)
