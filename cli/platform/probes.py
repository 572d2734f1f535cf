"""Probes of a recorded platform: its processes, /healthz, machines and clusters (`dcluster status`)."""

from __future__ import annotations

from typing import Any

import dcluster
from cli.platform import ray_node, serve_deploy, state
from worker import procs

STATUS_DEGRADED = "degraded"
STATUS_ABSENT = "absent"


def is_running(record: dict | None) -> bool:
    """Recorded as running, its core processes alive, and its API healthy."""
    if not record or record.get("status") != state.STATUS_RUNNING:
        return False
    head = record.get("head_processes") or []
    if not head or not all(ray_node.record_alive(r) for r in head):
        return False
    return serve_deploy.healthy(state.api_url(record), state.local_trust(record))


def collect(layout: state.Layout) -> dict:
    """What platform.json records, which of its processes live, and what the API says."""
    record = layout.load()
    if record is None:
        return {
            "state_dir": str(layout.state_dir),
            "status": STATUS_ABSENT,
            "message": f"no platform recorded in {layout.state_dir}; run `dcluster up`",
        }
    url = state.api_url(record)
    out: dict[str, Any] = {
        "state_dir": str(layout.state_dir),
        "recorded_status": record.get("status"),
        "owner_tag": record.get("owner_tag"),
        "api_url": url,
        "public_url": state.public_url(record),  # what agents, sub-clusters and logins are given
        "tls_fingerprint": state.tls_fingerprint(record),  # SHA-256 of the certificate clients pin
        "role": record.get("role", "head"),  # or "member": a node added with `dcluster up --join`
        "redis": record.get("redis"),  # the head's GCS fault tolerance, if any
        # A member's is the head's it joined.
        "ray_gcs_address": record.get("join") or f"127.0.0.1:{record.get('ray_ports', {}).get('gcs')}",
        "ray_dashboard_url": f"http://127.0.0.1:{record.get('ray_ports', {}).get('dashboard')}",
        "ray_metrics_url": f"http://127.0.0.1:{record.get('ray_ports', {}).get('metrics_export')}/metrics",
        "temp_dir": record.get("temp_dir"),
        "head_processes": [{**r, "alive": ray_node.record_alive(r)} for r in record.get("head_processes", [])],
        "agents": [
            {
                "index": a["index"],
                "username": a["username"],
                "pid": a["pid"],
                "alive": procs.pid_alive(a["pid"], a.get("create_time")),
                "log": a["log"],
            }
            for a in record.get("agents", [])
        ],
    }
    if record.get("error"):
        out["error"] = record["error"]
    out["owned_processes"] = len(procs.owned_processes(record["owner_tag"])) if record.get("owner_tag") else 0
    trust = state.local_trust(record)
    out["healthz"] = serve_deploy.healthy(url, trust)
    out["status"] = _overall(out)
    if out["healthz"]:
        out.update(_api_status(layout, url, trust))
    return out


def _overall(out: dict) -> str:
    head = out["head_processes"]
    if head and all(r["alive"] for r in head) and out["healthz"]:
        return state.STATUS_RUNNING if all(a["alive"] for a in out["agents"]) else STATUS_DEGRADED
    if out["owned_processes"]:
        return STATUS_DEGRADED
    return state.STATUS_STOPPED


def _api_status(layout: state.Layout, url: str, trust: dcluster.Trust) -> dict:
    creds = state.read_json(layout.admin_credentials_json)
    if not creds:
        return {"machines_error": f"no {layout.admin_credentials_json}"}
    out: dict[str, Any] = {}
    with dcluster.Client(url, trust=trust) as api:
        try:
            api.login(creds["username"], creds["password"])
            out["machines"] = [
                {k: m.get(k) for k in ("id", "name", "provider", "status", "last_heartbeat")}
                for m in api.list_machines()
            ]
        except dcluster.ClientError as exc:
            return {"machines_error": str(exc)}
        try:
            out["clusters"] = api.list_clusters()
        except dcluster.ApiError as exc:
            if exc.status_code not in (404, 405):  # the route arrives with the clusters issue
                out["clusters_error"] = str(exc)
        except dcluster.ClientError as exc:
            out["clusters_error"] = str(exc)
    return out
