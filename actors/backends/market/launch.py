"""What the launcher runs around Ray's SDK for a market cluster: nothing outside Ray; the node provider is
imported ahead."""

from __future__ import annotations

import importlib
from typing import Any

from actors.backends.market import launcher_config


class MarketLaunchSteps:
    """backend.LaunchSteps of the market backend."""

    def handles(self, config: dict[str, Any]) -> bool:
        return bool(config["provider"].get("module") == launcher_config.PROVIDER_MODULE)

    def warm_up(self) -> None:
        # The launcher loads it (httpx and all) when the launch begins: ahead, the cluster does not wait for it.
        importlib.import_module(launcher_config.PROVIDER_MODULE.rpartition(".")[0])

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        return config  # the node provider makes the leases' nodes during the launch itself

    def release(self, config: dict[str, Any]) -> None:
        pass  # closing the cluster's leases released everything
