"""The control plane's metrics through `ray.util.metrics`, scraped from the platform cluster's metrics endpoint."""

from __future__ import annotations

from collections.abc import Mapping

from ray.util import metrics

from dcl_core import domain

# Seconds: a cluster comes up in 10-60 s on a small machine, a release takes ~1-10 s.
PROVISION_BOUNDARIES: list[float] = [5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600]
RELEASE_BOUNDARIES: list[float] = [0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120]
LATENESS_BOUNDARIES: list[float] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10]


class RayMetrics:
    """Implements `actors.metrics.Metrics`; made inside an actor (metrics need a Ray worker)."""

    def __init__(self) -> None:
        self._clusters = metrics.Gauge("dcluster_clusters", "Buyer clusters by state", tag_keys=("state",))
        self._provision = metrics.Histogram(
            "dcluster_cluster_provision_seconds",
            "From a cluster's request to every node in Ray",
            boundaries=PROVISION_BOUNDARIES,
        )
        self._release = metrics.Histogram(
            "dcluster_cluster_release_seconds",
            "From a teardown's start to every node released",
            boundaries=RELEASE_BOUNDARIES,
        )
        self._lateness = metrics.Histogram(
            "dcluster_expiry_lateness_seconds",
            "How late an expiry fired after its deadline",
            boundaries=LATENESS_BOUNDARIES,
        )
        self._machines = metrics.Gauge(
            "dcluster_machines_online", "Online provider machines by GPU model", tag_keys=("gpu_model",)
        )
        self._sign_in_failures = metrics.Counter("dcluster_sign_in_failures", "Refused sign-ins", tag_keys=("reason",))
        self._known_models: set[str] = set()

    def cluster_states(self, counts: Mapping[str, int]) -> None:
        for state in domain.ClusterStatus:
            self._clusters.set(counts.get(state.value, 0), tags={"state": state.value})

    def provisioned(self, seconds: float) -> None:
        self._provision.observe(max(0.0, seconds))

    def released(self, seconds: float) -> None:
        self._release.observe(max(0.0, seconds))

    def expiry_lateness(self, seconds: float) -> None:
        self._lateness.observe(max(0.0, seconds))

    def machines_online(self, by_gpu_model: Mapping[str, int]) -> None:
        # A model whose last machine went away reads 0, not its last value.
        self._known_models |= set(by_gpu_model)
        for model in self._known_models:
            self._machines.set(by_gpu_model.get(model, 0), tags={"gpu_model": model})

    def sign_in_failed(self, *, throttled: bool) -> None:
        self._sign_in_failures.inc(tags={"reason": "throttled" if throttled else "wrong_credentials"})
