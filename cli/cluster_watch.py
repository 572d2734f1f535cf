"""ClusterWatcher: follows one cluster's events and status until a condition holds (`--wait`, `--follow`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NoReturn

import tenacity

import dcluster
from cli import output
from cli.exits import CliError, Exit
from dcl_core import domain

POLL_INTERVAL_S = 1.0
# The waits' clock and sleep (tests replace both with a fake clock).
MONOTONIC: Callable[[], float] = time.monotonic
SLEEP: Callable[[float], None] = time.sleep

# Statuses in which a cluster takes jobs (degraded: a worker's machine was lost; the rest runs).
USABLE = (domain.ClusterStatus.RUNNING.value, domain.ClusterStatus.DEGRADED.value)


class ClusterWatcher:
    """Follows one cluster: its new events (after the last id seen) and its status, until a condition holds."""

    def __init__(
        self,
        client: dcluster.Client,
        cluster_id: str,
        on_event: Callable[[dict], None] | None = None,
        *,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        on_cluster: Callable[[dict], None] | None = None,
    ):
        self.client = client
        self.cluster_id = cluster_id
        self.on_event = on_event or (lambda e: None)
        self.on_cluster = on_cluster or (lambda c: None)
        self.after = 0
        self.events: list[dict] = []
        # Looked up at call time, so that tests can swap the module's clock for a fake one.
        self._sleep = sleep or SLEEP
        self._clock = clock or MONOTONIC

    def drain_events(self) -> list[dict]:
        new = self.client.cluster_events(self.cluster_id, after=self.after)
        for event in new:
            self.after = max(self.after, int(event.get("id", 0)))
            self.events.append(event)
            self.on_event(event)
        return new

    def skip_past_events(self) -> None:
        """From now on, report only events newer than the ones that exist already."""
        on_event, self.on_event = self.on_event, (lambda e: None)
        try:
            self.drain_events()
        finally:
            self.on_event = on_event
        self.events.clear()

    def cluster(self) -> dict:
        return self.client.get_cluster(self.cluster_id)

    def until(self, done: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
        """Polls status then events until done(cluster); the platform's brief hiccups (5xx, 429,
        unreachable) are retried until the deadline. Raises CliError(TIMEOUT) past it (or the
        platform's error, when the last poll failed)."""
        deadline = self._clock() + timeout_s

        def poll() -> dict:
            cluster = self.cluster()
            self.drain_events()
            self.on_cluster(cluster)
            return cluster

        def give_up(retry_state: tenacity.RetryCallState) -> NoReturn:
            assert retry_state.outcome is not None
            cluster = retry_state.outcome.result()  # raises the last poll's error, if it failed
            raise CliError(
                f"timed out after {timeout_s:.0f} s waiting for cluster {self.cluster_id} to "
                f"{what}; it is {cluster['status']} and left as it is",
                Exit.TIMEOUT,
                cluster=cluster,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(dcluster.is_transient) | tenacity.retry_if_not_result(done),
            stop=lambda _: self._clock() >= deadline,
            wait=tenacity.wait_fixed(POLL_INTERVAL_S),
            sleep=self._sleep,
            retry_error_callback=give_up,
        )
        return retrying(poll)

    def wait_running(self, timeout_s: float) -> dict:
        cluster = self.until(lambda c: c["status"] in USABLE or not output.is_active(c["status"]), timeout_s, "run")
        if cluster["status"] not in USABLE:
            reason = cluster.get("reason") or "no reason given"
            raise CliError(
                f"cluster {self.cluster_id} is {cluster['status']} instead of running: {reason}",
                Exit.CLUSTER_ENDED,
                cluster=cluster,
            )
        return cluster

    def wait_ended(self, timeout_s: float) -> dict:
        return self.until(lambda c: output.is_terminal(c["status"]), timeout_s, "end")
