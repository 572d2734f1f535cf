"""ClusterWatcher.until on a fake clock: hiccups retried until the deadline, refusals raised at once."""

from __future__ import annotations

import pytest

import dcluster
from cli import cluster_watch, exits


class Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Client:
    """Answers get_cluster from a script: a dict is a cluster, an exception is raised."""

    def __init__(self, script):
        self.script = list(script)
        self.gets = 0

    def get_cluster(self, cluster_id):
        self.gets += 1
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def cluster_events(self, cluster_id, after=0):
        return []


def _watcher(script):
    clock = Clock()
    client = Client(script)
    return cluster_watch.ClusterWatcher(client, "c-1", sleep=clock.sleep, clock=clock.monotonic), client, clock


def test_hiccups_are_retried_until_the_cluster_runs():
    running = {"id": "c-1", "status": "running"}
    watcher, client, clock = _watcher(
        [dcluster.PlatformUnreachable("refused"), dcluster.ApiError(503, "restarting"), running]
    )
    assert watcher.wait_running(60) == running
    assert client.gets == 3 and clock.now == 2 * cluster_watch.POLL_INTERVAL_S


def test_a_refusal_is_raised_at_once():
    watcher, client, clock = _watcher([dcluster.ApiError(404, "not found")])
    with pytest.raises(dcluster.ApiError):
        watcher.wait_running(60)
    assert client.gets == 1 and clock.now == 0


def test_past_the_deadline_the_last_hiccup_or_a_timeout():
    watcher, _, clock = _watcher([dcluster.ApiError(503, "restarting")])
    with pytest.raises(dcluster.ApiError, match="503"):
        watcher.wait_running(10)
    assert clock.now == 10
    watcher, _, clock = _watcher([{"id": "c-1", "status": "provisioning"}])
    with pytest.raises(exits.CliError, match="timed out after 10 s .* it is provisioning") as err:
        watcher.wait_running(10)
    assert err.value.code == exits.Exit.TIMEOUT and err.value.fields["cluster"]["status"] == "provisioning"
