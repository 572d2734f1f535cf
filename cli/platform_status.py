"""Probes of a recorded platform: its processes, /healthz, machines and clusters (`dcluster status`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psutil

import dcluster
from cli import platform_state as pstate
from worker import procs

STATUS_DEGRADED = "degraded"
STATUS_ABSENT = "absent"


def api_url(record: dict) -> str:
    return f"http://{pstate.connect_host(record['host'])}:{record['port']}"


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    """GET <url>/healthz answers 200."""
    try:
        return httpx.get(f"{url}/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def proc_record(proc: psutil.Process) -> dict | None:
    """pid, start time (to tell a reused PID) and executable name of a live process."""
    try:
        with proc.oneshot():
            cmd = proc.cmdline()
            return {
                "pid": proc.pid,
                "create_time": proc.create_time(),
                "name": Path(cmd[0]).name if cmd else proc.name(),
            }
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def record_alive(record: dict) -> bool:
    return procs.pid_alive(record["pid"], record.get("create_time"))


def collect(layout: pstate.Layout) -> dict:
    """What platform.json records, which of its processes live, and what the API says."""
    record = pstate.read_json(layout.platform_json)
    if record is None:
        return {
            "state_dir": str(layout.state_dir),
            "status": STATUS_ABSENT,
            "message": f"no platform recorded in {layout.state_dir}; run `dcluster up`",
        }
    url = api_url(record)
    out: dict[str, Any] = {
        "state_dir": str(layout.state_dir),
        "recorded_status": record.get("status"),
        "owner_tag": record.get("owner_tag"),
        "api_url": url,
        "role": record.get("role", "head"),  # or "member": a node added with `dcluster up --join`
        "redis": record.get("redis"),  # the head's GCS fault tolerance, if any
        # A member's is the head's it joined.
        "ray_gcs_address": record.get("join") or f"127.0.0.1:{record.get('ray_ports', {}).get('gcs')}",
        "ray_dashboard_url": f"http://127.0.0.1:{record.get('ray_ports', {}).get('dashboard')}",
        "ray_metrics_url": f"http://127.0.0.1:{record.get('ray_ports', {}).get('metrics_export')}/metrics",
        "temp_dir": record.get("temp_dir"),
        "head_processes": [{**r, "alive": record_alive(r)} for r in record.get("head_processes", [])],
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
    out["healthz"] = healthy(url)
    out["status"] = _overall(out)
    if out["healthz"]:
        out.update(_api_status(layout, url))
    return out


def _overall(out: dict) -> str:
    head = out["head_processes"]
    if head and all(r["alive"] for r in head) and out["healthz"]:
        return pstate.STATUS_RUNNING if all(a["alive"] for a in out["agents"]) else STATUS_DEGRADED
    if out["owned_processes"]:
        return STATUS_DEGRADED
    return pstate.STATUS_STOPPED


def _api_status(layout: pstate.Layout, url: str) -> dict:
    creds = pstate.read_json(layout.admin_credentials_json)
    if not creds:
        return {"machines_error": f"no {layout.admin_credentials_json}"}
    out: dict[str, Any] = {}
    with dcluster.Client(url) as api:
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
