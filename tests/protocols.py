"""Fakes implement the same Protocol as the real thing, so they cannot drift (KubeRay's interface check)."""

from __future__ import annotations

import inspect


def _shape(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def protocol_methods(protocol: type) -> list[str]:
    return [n for n, _ in inspect.getmembers(protocol, inspect.isfunction) if not n.startswith("_")]


def assert_implements(protocol: type, *implementations: type) -> None:
    """Every public method of protocol exists on each implementation with the same parameters (names, kinds,
    defaults) and the same sync/async nature."""
    methods = protocol_methods(protocol)
    assert methods, f"{protocol.__name__} declares no methods"
    for cls in implementations:
        for name in methods:
            want, have = getattr(protocol, name), getattr(cls, name, None)
            assert have is not None, f"{cls.__name__} lacks {protocol.__name__}.{name}"
            assert _shape(have) == _shape(want), f"{cls.__name__}.{name} differs from {protocol.__name__}.{name}"
            assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), (
                f"{cls.__name__}.{name}: async-ness differs from {protocol.__name__}"
            )
