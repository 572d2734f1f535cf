"""The platform's Serve app: its config for this machine, `serve deploy`, and waiting until the API answers."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import httpx
import yaml

import dcluster
from cli.platform import install, log_tail, state, waiting
from cli.platform.errors import PlatformError
from dcl_core import protocol, ray_ports, secret_files

logger = logging.getLogger(__name__)

SERVE_TEMPLATE = Path(__file__).with_name("serve.yaml")  # package data; platform/serve.yaml links to it
SERVE_IMPORT_PATH = "serve_app.app:build_app"
SERVE_DEPLOY_TIMEOUT_S = 120.0
# `ray start` returns before the dashboard listens (after a head restart, often seconds later);
# `serve deploy` checks it once and gives up, so wait for it first.
DASHBOARD_TIMEOUT_S = 120.0
HEALTHZ_TIMEOUT_S = 180.0


# --- the config ---------------------------------------------------------------------------


def patch_serve_config(
    text: str,
    *,
    host: str,
    port: int,
    state_dir: Path,
    heartbeat_interval_s: float,
    api_url: str | None = None,
    settings: dict | None = None,
) -> dict:
    """The platform's Serve config with this machine's HTTP address and state dir filled in,
    and `settings` (more PlatformSettings fields) over the template's. The API replica listens on
    the address itself (serve_app.listener), so Serve's own HTTP proxy is off."""
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise PlatformError("the Serve config must be a YAML mapping")
    config["proxy_location"] = "Disabled"
    config.pop("http_options", None)
    apps = config.get("applications") or []
    if not apps:
        raise PlatformError("the Serve config has no applications")
    targets = [a for a in apps if a.get("import_path") == SERVE_IMPORT_PATH] or (apps if len(apps) == 1 else [])
    if not targets:
        raise PlatformError(f"no application with import_path {SERVE_IMPORT_PATH} in the Serve config")
    for app in targets:
        args = app.setdefault("args", {}) or {}
        app["args"] = args
        args["state_dir"] = str(Path(state_dir).absolute())
        args["listen_host"] = host
        args["listen_port"] = int(port)
        args["heartbeat_interval_s"] = float(heartbeat_interval_s)
        # Where provider machines (agents, sub-cluster autoscalers) reach the API.
        # An operator's api_url in the template stands unless `up` names one (its --public-url).
        args["api_url"] = api_url or args.get("api_url") or f"http://{state.connect_host(host)}:{int(port)}"
        args.update(settings or {})
    return config


def template_api_url(text: str) -> str | None:
    """The api_url an operator wrote among the platform app's args in the Serve config, if any."""
    config = yaml.safe_load(text)
    for app in (config or {}).get("applications") or [] if isinstance(config, dict) else []:
        if isinstance(app, dict) and app.get("import_path") == SERVE_IMPORT_PATH:
            url = (app.get("args") or {}).get("api_url")
            return str(url) if url else None
    return None


def every_node_serve(config: dict, *, api_replicas: int) -> dict:
    """The API's replicas spread one a node: each listens on its node's API port itself (serve_app.listener),
    so every platform node answers the API without Serve's proxy."""
    for app in config.get("applications") or []:
        if app.get("import_path") != SERVE_IMPORT_PATH:
            continue
        deployments = app.setdefault("deployments", []) or []
        app["deployments"] = deployments
        api = next((d for d in deployments if d.get("name") == protocol.API_DEPLOYMENT), None)
        if api is None:
            api = {"name": protocol.API_DEPLOYMENT}
            deployments.append(api)
        api["num_replicas"] = int(api_replicas)
        api["max_replicas_per_node"] = 1
    return config


def dump_serve_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


# --- deploying it -------------------------------------------------------------------------


def healthy(url: str, trust: dcluster.Trust | None = None, timeout_s: float = 2.0) -> bool:
    """GET <url>/healthz answers ok (over TLS: from a server holding the trusted certificate)."""
    with dcluster.Client(url, trust=trust, timeout_s=timeout_s) as client:
        return client.healthz()


def _dashboard_get(dashboard_port: int, token_path: Path, path: str) -> httpx.Response:
    """GET on this platform's Ray dashboard with its Ray auth token."""
    headers = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
    return httpx.get(f"http://127.0.0.1:{dashboard_port}{path}", headers=headers, timeout=5)


def _serve_app_failure(dashboard_port: int, token_path: Path) -> str | None:
    """The error of a Serve application that failed to deploy (from the dashboard), else None."""
    try:
        apps = _dashboard_get(dashboard_port, token_path, "/api/serve/applications/").json().get("applications") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    for name, app in apps.items():
        if isinstance(app, dict) and app.get("status") == "DEPLOY_FAILED":
            return f"application {name!r}: {app.get('message') or 'DEPLOY_FAILED'}"
    return None


def _dashboard_answers(dashboard_port: int, token_path: Path) -> bool:
    try:
        return _dashboard_get(dashboard_port, token_path, "/api/version").status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def last_error_line(text: str) -> str:
    """The `SomeError: message` line of a traceback (the last one), else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
    return ((errors or lines or [""])[-1])[:300]


def _serve_logs_tail(temp_dir: Path) -> str:
    serve_dir = temp_dir / "session_latest" / "logs" / "serve"
    files = sorted(serve_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)[-3:] if serve_dir.is_dir() else []
    parts = [f"--- {f} ---\n{log_tail.tail(f, 20)}" for f in files]
    return "\n".join(parts) or f"(no Serve logs under {serve_dir})"


def deploy(
    config: dict,
    *,
    layout: state.Layout,
    env: dict,
    ports: ray_ports.RayPorts,
    temp_dir: Path,
    api_url: str,
    trust: dcluster.Trust | None = None,
) -> None:
    """`serve deploy` the config once the Ray dashboard answers, then wait for api_url/healthz; a failed
    deployment is reported as soon as the dashboard shows it, with Serve's log tails."""
    secret_files.write_secret_file(layout.serve_deploy_yaml, dump_serve_config(config))
    cmd = [
        *install.venv_script("serve"),
        "deploy",
        str(layout.serve_deploy_yaml),
        "--address",
        f"http://127.0.0.1:{ports.dashboard}",
    ]
    waiting.wait_for(
        f"the Ray dashboard on port {ports.dashboard}",
        lambda: _dashboard_answers(ports.dashboard, layout.ray_auth_token),
        DASHBOARD_TIMEOUT_S,
        on_timeout=lambda: log_tail.tail(temp_dir / "session_latest" / "logs" / "dashboard.log"),
    )
    logger.info("deploying the Serve app")
    with open(layout.serve_log, "ab") as log:
        try:
            rc: int | str = subprocess.run(
                cmd,
                env=env,
                cwd=layout.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=SERVE_DEPLOY_TIMEOUT_S,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        raise PlatformError(
            f"`serve deploy` failed ({rc}); see {layout.serve_log}", details=log_tail.tail(layout.serve_log)
        )
    logger.info("waiting for %s/healthz", api_url)

    def ready() -> bool:
        if healthy(api_url, trust):
            return True
        failed = _serve_app_failure(ports.dashboard, layout.ray_auth_token)
        if failed:
            raise PlatformError(
                f"the Serve app failed to deploy: {last_error_line(failed)}",
                details=failed + "\n" + _serve_logs_tail(temp_dir),
            )
        return False

    waiting.wait_for(
        f"{api_url}/healthz", ready, HEALTHZ_TIMEOUT_S, interval_s=1.0, on_timeout=lambda: _serve_logs_tail(temp_dir)
    )
