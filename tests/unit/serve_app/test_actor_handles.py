"""serve_app.actor_handles: every method a view types is one the real actor serves, under its own name, and a
view's method is the handle's own (no copy, no wrapper)."""

from __future__ import annotations

import inspect

import pytest

from actors import actor_classes
from actors.machines import registry
from serve_app import actor_handles


def _methods(view: type[actor_handles.ActorView]) -> list[str]:
    return [m.name for _, m in inspect.getmembers(view, lambda m: isinstance(m, actor_handles._Method))]


@pytest.mark.parametrize(
    ("view", "actor"),
    [
        (actor_handles.Registry, actor_classes.ProviderRegistryActor),
        (actor_handles.Clusters, actor_classes.ClusterManagerActor),
    ],
)
def test_each_typed_method_is_one_the_actor_serves(view, actor):
    names = _methods(view)
    assert "start_status" in names and len(names) > 10
    missing = [name for name in names if not inspect.iscoroutinefunction(getattr(actor, name, None))]
    assert missing == [], f"{view.__name__} types methods {actor.__name__} does not serve: {missing}"


def test_a_method_typed_under_another_name_is_refused():
    # Python before 3.12 wraps what __set_name__ raises in a RuntimeError; 3.12 raises it as it is.
    with pytest.raises((TypeError, RuntimeError)) as refused:

        class Registry(actor_handles.ActorView):
            login = actor_handles._Method(registry.ProviderRegistry.get_account)

    error = refused.value.__cause__ or refused.value
    assert isinstance(error, TypeError) and "Registry.login is typed as get_account" in str(error)


def test_a_views_method_is_the_handles_own():
    class Handle:
        def __init__(self):
            self.login = object()  # what Ray's handle gives: a bound ActorMethod

    handle = Handle()
    view = actor_handles.Registry(handle)
    assert view.login is handle.login
    assert view.handle is handle
    with pytest.raises(AttributeError):
        view.list_offers  # noqa: B018 (the handle's own AttributeError, as Ray's handle raises it)
