"""The API baseline: the platform's own FastAPI app under plain uvicorn, its actor calls answered in-process.

Same routes, auth dependency (JWT verified with the platform's secret), body-size middleware,
error mapping and response models as the Serve deployment; what is missing is exactly what the
benchmark measures: the Serve proxy, the replica hop and the control-plane actor (and its SQLite).
`GET /v1/clusters/{id}` returns a copy of a real answer; the heartbeat returns the usual ack.

    python -m benchmarks.baseline_app --port P --jwt-secret-file F --cluster-json C
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class _Method:
    def __init__(self, answer):
        self._answer = answer

    def remote(self, *args, **kwargs):
        async def call():
            return self._answer(*args, **kwargs) if callable(self._answer) else self._answer

        return call()


class StubHandle:
    """Stands in for an actor handle: `await handle.method.remote(...)` returns a fixed answer."""

    def __init__(self, **answers):
        self._answers = answers

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._answers:
            raise AttributeError(name)
        return _Method(self._answers[name])


def build(secret: str, cluster: dict, heartbeat_interval_s: float):
    from serve_app import app as app_mod

    ack = {"status": "online", "heartbeat_interval_s": heartbeat_interval_s, "stale_leases": []}
    registry = StubHandle(
        signing_secret=secret,
        heartbeat=ack,
        heartbeats=lambda beats: [ack] * len(beats),
        ready=True,
        start_status={"actor": "ProviderRegistry", "ready": True},
    )
    clusters = StubHandle(
        get_cluster=cluster,
        get_clusters=lambda reads: [cluster] * len(reads),
        ready=True,
        start_status={"actor": "ClusterManager", "ready": True},
    )
    return app_mod.create_app(registry, clusters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwt-secret-file", type=Path, required=True)
    parser.add_argument("--cluster-json", type=Path, required=True)
    parser.add_argument("--heartbeat-interval-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    import uvicorn

    app = build(
        args.jwt_secret_file.read_text().strip(), json.loads(args.cluster_json.read_text()), args.heartbeat_interval_s
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
