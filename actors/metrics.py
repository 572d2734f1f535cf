"""What the control plane measures, as a small interface: plain classes report here and never import Ray.

`actors.ray_metrics.RayMetrics` exports these through `ray.util.metrics` (the platform cluster's
metrics endpoint); `NullMetrics` is the default, so a plain class works without any.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Metrics(Protocol):
    def cluster_states(self, counts: Mapping[str, int]) -> None:
        """How many clusters are in each state now (every state, zeros included)."""

    def provisioned(self, seconds: float) -> None:
        """A cluster reached running this long after it was requested."""

    def released(self, seconds: float) -> None:
        """A cluster's nodes were all released this long after its teardown began."""

    def expiry_lateness(self, seconds: float) -> None:
        """An expiry fired this long after its deadline."""

    def machines_online(self, by_gpu_model: Mapping[str, int]) -> None:
        """Online machines per GPU model ('none' for CPU-only machines)."""

    def sign_in_failed(self, *, throttled: bool) -> None:
        """A sign-in was refused: a wrong password, or throttled by the failed-login limit."""


class NullMetrics:
    """Measures nothing."""

    def cluster_states(self, counts: Mapping[str, int]) -> None:
        pass

    def provisioned(self, seconds: float) -> None:
        pass

    def released(self, seconds: float) -> None:
        pass

    def expiry_lateness(self, seconds: float) -> None:
        pass

    def machines_online(self, by_gpu_model: Mapping[str, int]) -> None:
        pass

    def sign_in_failed(self, *, throttled: bool) -> None:
        pass
