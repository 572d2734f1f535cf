"""Every backend, by its ClusterSpec.backend name: the one module that names them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.access import auth
from actors.backends import backend
from actors.backends.aws import backend as aws_backend
from actors.backends.aws import launch as aws_launch
from actors.backends.market import backend as market_backend
from actors.backends.market import launch as market_launch
from actors.settings import PlatformSettings

LAUNCH_STEPS: tuple[backend.LaunchSteps, ...] = (market_launch.MarketLaunchSteps(), aws_launch.AwsLaunchSteps())


def backends(settings: PlatformSettings, tokens: Callable[[], auth.TokenIssuer]) -> dict[str, backend.Backend]:
    """Every backend by its ClusterSpec.backend name."""
    made: list[backend.Backend] = [market_backend.MarketBackend(settings, tokens), aws_backend.AwsBackend(settings)]
    return {b.name: b for b in made}


def warm_up() -> None:
    """Imports ahead what any backend's launch will need."""
    for steps in LAUNCH_STEPS:
        steps.warm_up()


def launch_steps(config: dict[str, Any]) -> backend.LaunchSteps:
    """The launch steps of the backend whose launcher config this is."""
    for steps in LAUNCH_STEPS:
        if steps.handles(config):
            return steps
    raise ValueError(f"no backend renders a launcher config with provider {config['provider'].get('type')!r}")
