"""The launcher's pure parts: ports, temp dir rule, Ray env and command, Serve config patching, file modes."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import yaml

from actors import settings as settings_mod
from cli import main as cli_main
from cli.platform import accounts, ray_node, serve_deploy, state
from cli.platform import errors as platform_errors
from cli.platform import launcher as platform_launcher
from dcl_core import ray_ports, secret_files
from worker import procs

SERVE_YAML = """
proxy_location: HeadOnly
http_options:
  host: 127.0.0.1
  port: 8000
applications:
  - name: dcluster
    route_prefix: /
    import_path: serve_app.app:build_app
    args:
      state_dir: /var/lib/dcluster
      heartbeat_interval_s: 5.0
      token_ttl_s: 900
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- ports ------------------------------------------------------------------------------


def test_ray_ports_distinct_and_outside_exclusions():
    ports = procs.allocate_ray_ports(exclude=(8000,))
    singles = ports.listening()
    assert len(singles) == 11 and len(set(singles)) == 11
    assert 8000 not in ports.all_ports()
    assert ports.max_worker - ports.min_worker + 1 == ray_ports.WORKER_PORT_RANGE
    assert not set(singles) & set(range(ports.min_worker, ports.max_worker + 1))
    assert not (ports.min_worker <= 31999 and ports.max_worker >= 30000)  # Serve direct ingress
    assert ray_ports.RayPorts.from_dict(ports.to_dict()) == ports


def test_two_allocations_can_coexist_when_excluded():
    a = procs.allocate_ray_ports()
    b = procs.allocate_ray_ports(exclude=tuple(a.all_ports()))
    assert not a.all_ports() & b.all_ports()


def test_ray_head_command_names_every_port():
    ports = procs.allocate_ray_ports()
    cmd = ray_node.ray_head_command(ports=ports, temp_dir=Path("/tmp/dcl-x"))
    assert cmd[0].endswith("/ray") and cmd[1:3] == ["start", "--head"]

    def opt(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert opt("--port") == str(ports.gcs)
    assert opt("--dashboard-port") == str(ports.dashboard)
    assert opt("--ray-client-server-port") == str(ports.client_server)
    assert opt("--node-manager-port") == str(ports.node_manager)
    assert opt("--object-manager-port") == str(ports.object_manager)
    assert opt("--dashboard-agent-listen-port") == str(ports.dashboard_agent_listen)
    assert opt("--dashboard-agent-grpc-port") == str(ports.dashboard_agent_grpc)
    assert opt("--runtime-env-agent-port") == str(ports.runtime_env_agent)
    assert opt("--metrics-export-port") == str(ports.metrics_export)
    assert opt("--min-worker-port") == str(ports.min_worker)
    assert opt("--max-worker-port") == str(ports.max_worker)
    assert opt("--temp-dir") == "/tmp/dcl-x"
    assert opt("--dashboard-host") == "127.0.0.1"
    assert "--disable-usage-stats" in cmd
    assert "ray stop" not in " ".join(cmd)


# --- temp dir and environment -----------------------------------------------------------


def test_temp_dir_short_state_dir_keeps_it_inside():
    assert state.ray_temp_dir(Path("/root/.dcluster")) == Path("/root/.dcluster/ray")


def test_temp_dir_long_state_dir_moves_to_tmp():
    state_path = Path("/home/someone/projects/marketplace/state/dcluster")
    assert len(str(state_path / "ray")) > state.MAX_TEMP_DIR_LEN
    expected = "/tmp/dcl-" + hashlib.sha256(str(state_path).encode()).hexdigest()[:10]
    assert state.ray_temp_dir(state_path) == Path(expected)
    assert state.ray_temp_dir(state_path) == state.ray_temp_dir(state_path)  # stable across runs
    assert state.ray_temp_dir(state_path / "other") != state.ray_temp_dir(state_path)


def test_temp_dir_boundary():
    base = "/" + "a" * (state.MAX_TEMP_DIR_LEN - len("/ray") - 1)
    assert len(base + "/ray") == state.MAX_TEMP_DIR_LEN
    assert state.ray_temp_dir(Path(base)) == Path(base) / "ray"
    assert state.ray_temp_dir(Path(base + "b")).parent == Path("/tmp")


def test_ray_env_isolates_home_auth_and_metric_ports(tmp_path):
    ports = procs.allocate_ray_ports()
    layout = state.Layout(tmp_path)
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PYTHONPATH": "/x",
        "RAY_ADDRESS": "10.0.0.1:6379",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "secret",
    }
    env = ray_node.ray_env(base, layout=layout, ports=ports)
    assert env["HOME"] == str(tmp_path / "home")
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["AUTOSCALER_METRIC_PORT"] == str(ports.autoscaler_metric)
    assert env["DASHBOARD_METRIC_PORT"] == str(ports.dashboard_metric)
    assert env["PYTHONPATH"] == "/x"  # the caller's, nothing of a checkout: the installed packages are found as such
    assert "RAY_ADDRESS" not in env and "RAY_AUTH_TOKEN" not in env  # never the caller's cluster or token
    # The platform's own token: a 0600 file in its state dir.
    assert env["RAY_AUTH_MODE"] == "token"
    token_file = tmp_path / "ray_auth_token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(token_file)
    assert oct(token_file.stat().st_mode & 0o777) == "0o600" and len(token_file.read_text()) == 64
    assert env["PATH"] == "/usr/bin"
    assert base["HOME"] == "/root"  # the caller's mapping is not modified


# --- Serve config -----------------------------------------------------------------------


def test_patch_serve_config(tmp_path):
    config = serve_deploy.patch_serve_config(
        SERVE_YAML, host="0.0.0.0", port=18080, state_dir=tmp_path, heartbeat_interval_s=1.5
    )
    assert "http_options" not in config and config["proxy_location"] == "Disabled"  # the replica listens itself
    (app,) = config["applications"]
    assert app["args"] == {
        "state_dir": str(tmp_path),
        "listen_host": "0.0.0.0",
        "listen_port": 18080,
        "heartbeat_interval_s": 1.5,
        "token_ttl_s": 900,
        "api_url": "http://127.0.0.1:18080",
    }  # where provider machines reach the API
    assert app["import_path"] == "serve_app.app:build_app" and app["route_prefix"] == "/"
    assert yaml.safe_load(serve_deploy.dump_serve_config(config)) == config


def test_patch_serve_config_relative_state_dir_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = serve_deploy.patch_serve_config(
        SERVE_YAML, host="127.0.0.1", port=1, state_dir=Path("rel"), heartbeat_interval_s=5
    )
    assert config["applications"][0]["args"]["state_dir"] == str(tmp_path / "rel")


def test_patch_serve_config_fills_missing_sections(tmp_path):
    text = "applications:\n  - name: x\n    import_path: serve_app.app:build_app\n"
    config = serve_deploy.patch_serve_config(text, host="127.0.0.1", port=9, state_dir=tmp_path, heartbeat_interval_s=2)
    args = config["applications"][0]["args"]
    assert (args["listen_host"], args["listen_port"], args["heartbeat_interval_s"]) == ("127.0.0.1", 9, 2.0)


def test_patch_serve_config_rejects_configs_without_the_app(tmp_path):
    with pytest.raises(platform_errors.PlatformError):
        serve_deploy.patch_serve_config(
            "http_options: {}\n", host="h", port=1, state_dir=tmp_path, heartbeat_interval_s=1
        )
    two = "applications:\n  - {name: a, import_path: other:app}\n  - {name: b, import_path: more:app}\n"
    with pytest.raises(platform_errors.PlatformError):
        serve_deploy.patch_serve_config(two, host="h", port=1, state_dir=tmp_path, heartbeat_interval_s=1)


def test_repo_serve_yaml_patches():
    config = serve_deploy.patch_serve_config(
        serve_deploy.SERVE_TEMPLATE.read_text(),
        host="127.0.0.1",
        port=8123,
        state_dir=Path("/tmp/s"),
        heartbeat_interval_s=5,
    )
    assert config["applications"][0]["args"]["listen_port"] == 8123
    settings_mod.PlatformSettings.model_validate(config["applications"][0]["args"])  # the app accepts its args


# --- files ------------------------------------------------------------------------------


def test_state_files_private(tmp_path):
    state_path = tmp_path / "state"
    secret_files.ensure_private_dir(state_path)
    assert _mode(state_path) == 0o700
    (tmp_path / "loose").mkdir(mode=0o755)
    secret_files.ensure_private_dir(tmp_path / "loose")
    assert _mode(tmp_path / "loose") == 0o700

    state.write_json(state_path / "platform.json", {"a": 1})
    assert _mode(state_path / "platform.json") == 0o600
    assert state.read_json(state_path / "platform.json") == {"a": 1}
    assert state.read_json(state_path / "missing.json") is None
    secret_files.write_secret_file(state_path / "serve.deploy.yaml", "x: 1\n")
    assert _mode(state_path / "serve.deploy.yaml") == 0o600
    assert not list(state_path.glob(".*.tmp"))


def test_read_json_reports_corrupt_file(tmp_path):
    (tmp_path / "p.json").write_text("{nope")
    with pytest.raises(platform_errors.PlatformError, match="p.json"):
        state.read_json(tmp_path / "p.json")


def test_credential_store_keeps_passwords(tmp_path):
    store = accounts.CredentialStore(tmp_path / "credentials.json")
    pw, created = store.get_or_create("local-provider-1", "provider")
    assert created and len(pw) >= 16
    assert _mode(tmp_path / "credentials.json") == 0o600
    again, created = accounts.CredentialStore(tmp_path / "credentials.json").get_or_create(
        "local-provider-1", "provider"
    )
    assert again == pw and not created
    other, _ = store.get_or_create("local-buyer", "buyer")
    assert other != pw
    store.set_url("http://127.0.0.1:8000")
    assert store.password("local-provider-1") == pw and store.password("nobody") is None


def test_state_lock_is_exclusive(tmp_path):
    with state.state_lock(tmp_path):
        with pytest.raises(platform_errors.PlatformError, match="another dcluster"):
            with state.state_lock(tmp_path):
                pass
    with state.state_lock(tmp_path):  # released
        pass


def test_names_and_tags():
    tag = state.new_owner_tag()
    assert tag.startswith("dcl-platform-") and len(tag) == len("dcl-platform-") + 8
    assert state.agent_owner_tag(tag, 2) == f"{tag}-agent-2"
    assert accounts.provider_username(3) == "local-provider-3"
    assert state.connect_host("0.0.0.0") == "127.0.0.1" and state.connect_host("10.1.2.3") == "10.1.2.3"


# --- launcher and CLI without Ray -------------------------------------------------------


def test_up_refuses_a_taken_port(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        launcher = platform_launcher.PlatformLauncher(tmp_path / "s", port=port)
        with pytest.raises(platform_errors.PlatformError, match=rf"port {port}.*--port"):
            launcher.up()
    assert _mode(tmp_path / "s") == 0o700


def test_cli_status_and_down_without_platform(tmp_path, capsys):
    assert cli_main.main(["status", "--state-dir", str(tmp_path)]) == 0
    assert "no platform recorded" in capsys.readouterr().out
    assert cli_main.main(["down", "--state-dir", str(tmp_path)]) == 0
    assert "no platform recorded" in capsys.readouterr().out


def test_cli_expected_failure_is_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        rc = cli_main.main(["up", "--state-dir", str(tmp_path), "--port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("dcluster up: error: port") and "Traceback" not in "\n".join(err)


def test_cli_state_dir_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DCLUSTER_STATE_DIR", str(tmp_path / "from-env"))
    assert state.default_state_dir() == tmp_path / "from-env"
    monkeypatch.delenv("DCLUSTER_STATE_DIR")
    assert state.default_state_dir() == Path.home() / ".dcluster"


def test_last_error_line_picks_the_exception():
    text = (
        "Deploying app 'dcluster' failed with exception:\nTraceback (most recent call last):\n  File x\n"
        "RuntimeError: Traceback (most recent call last):\n  File y\n"
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for PlatformSettings\n"
        "bogus\n  Extra inputs are not permitted\n"
    )
    assert serve_deploy.last_error_line(text).startswith("pydantic_core._pydantic_core.ValidationError: 1 valid")
    assert serve_deploy.last_error_line("just text\nlast line\n") == "last line"
