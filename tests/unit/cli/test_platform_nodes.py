"""`dcluster up` for a platform on several nodes: --database spreads Serve, --redis turns on GCS fault tolerance,
--join adds a node; none of it changes a plain `dcluster up`."""

from __future__ import annotations

import pytest

from cli.platform import errors as platform_errors
from cli.platform import launcher as platform_launcher
from cli.platform import ray_node, serve_deploy, state
from dcl_core import protocol, ray_ports, secret_files

PG = {"database": "postgresql://dcluster@db-host:5432/dcluster"}


def _config(settings=None, **kw):
    return serve_deploy.patch_serve_config(
        serve_deploy.SERVE_TEMPLATE.read_text(),
        host="127.0.0.1",
        port=8000,
        state_dir="/s",
        heartbeat_interval_s=5.0,
        settings=settings,
        **kw,
    )


def test_a_plain_up_runs_one_replica_that_listens_itself():
    config = _config()
    assert config["proxy_location"] == "Disabled"
    assert not any(app.get("deployments") for app in config["applications"])


def test_on_postgresql_every_node_runs_one_replica_of_the_api_listening_itself():
    config = serve_deploy.every_node_serve(_config(PG), api_replicas=3)
    assert config["proxy_location"] == "Disabled"
    (api,) = config["applications"][0]["deployments"]
    assert api == {"name": protocol.API_DEPLOYMENT, "num_replicas": 3, "max_replicas_per_node": 1}


def test_redis_urls_and_the_gcs_fault_tolerance_environment(tmp_path):
    assert ray_node.redis_address("redis://10.0.0.5:6379") == "10.0.0.5:6379"
    for bad in ("10.0.0.5:6379", "redis://:pw@h:6379", "redis://h", "redis://h:99999", "http://h:6379"):
        with pytest.raises(platform_errors.PlatformError, match="redis://HOST:PORT"):
            ray_node.redis_address(bad)
    env = ray_node.gcs_fault_tolerance_env({}, redis_url="redis://127.0.0.1:6390", state_dir=tmp_path)
    assert env["RAY_REDIS_ADDRESS"] == "127.0.0.1:6390"
    # The same namespace on every restart from this state dir; another platform's differs; the operator's wins.
    assert (
        env[ray_node.REDIS_NAMESPACE_ENV]
        == ray_node.redis_namespace(tmp_path)
        != ray_node.redis_namespace(tmp_path / "x")
    )
    mine = ray_node.gcs_fault_tolerance_env(
        {ray_node.REDIS_NAMESPACE_ENV: "ops"}, redis_url="redis://h:1", state_dir=tmp_path
    )
    assert mine[ray_node.REDIS_NAMESPACE_ENV] == "ops"


def test_the_secret_key_is_the_operators_or_one_made_once_in_the_state_dir(tmp_path):
    layout = state.Layout(tmp_path)
    assert ray_node.secret_key_env({secret_files.SECRET_KEY_ENV: "k"}, layout) == {}
    assert not layout.secret_key.exists()
    env = ray_node.secret_key_env({}, layout)
    key = layout.secret_key.read_text()
    assert env == {secret_files.SECRET_KEY_FILE_ENV: str(layout.secret_key)}
    assert oct(layout.secret_key.stat().st_mode & 0o777) == "0o600"
    ray_node.secret_key_env({}, layout)
    assert layout.secret_key.read_text() == key  # never replaced: it opens what the database holds


def test_a_joined_node_carries_the_member_label_and_its_own_ports(tmp_path):
    ports = ray_ports.RayPorts.from_ports(list(range(20000, 20011)), 21000)
    cmd = ray_node.ray_member_command(head_address="10.0.0.1:6379", ports=ports, temp_dir=tmp_path)
    assert cmd[cmd.index("--address") + 1] == "10.0.0.1:6379" and "--head" not in cmd
    assert cmd[cmd.index("--labels") + 1] == f"{protocol.PLATFORM_MEMBER_LABEL}={protocol.PLATFORM_MEMBER_VALUE}"
    assert cmd[cmd.index("--temp-dir") + 1] == str(tmp_path)


def test_bad_multi_node_options_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(platform_errors.PlatformError, match="GCS address HOST:PORT"):
        platform_launcher.PlatformLauncher(tmp_path, join="http://head")
    with pytest.raises(platform_errors.PlatformError, match="are the head's"):
        platform_launcher.PlatformLauncher(tmp_path, join="10.0.0.1:6379", settings=PG)
    with pytest.raises(platform_errors.PlatformError, match="--api-replicas needs --database"):
        platform_launcher.PlatformLauncher(tmp_path, api_replicas=2)
    with pytest.raises(platform_errors.PlatformError, match="redis://HOST:PORT"):
        platform_launcher.PlatformLauncher(tmp_path, redis="localhost:6379")


def test_join_needs_the_platform_token_and_its_secret_key(tmp_path, monkeypatch):
    monkeypatch.delenv(secret_files.SECRET_KEY_ENV, raising=False)
    monkeypatch.delenv(secret_files.SECRET_KEY_FILE_ENV, raising=False)
    member = platform_launcher.PlatformLauncher(tmp_path / "member", join="127.0.0.1:6379")
    with pytest.raises(platform_errors.PlatformError, match="ray_auth_token"):
        member.up()
    secret_files.write_secret_file(tmp_path / "member" / "ray_auth_token", "t")
    with pytest.raises(platform_errors.PlatformError, match="no secret key"):
        member.up()


def test_a_head_restarted_on_the_same_redis_takes_its_previous_ports_again():
    redis = "redis://127.0.0.1:6390"
    previous = {"role": "head", "redis": redis, "ray_ports": {"gcs": 1}}
    assert platform_launcher.recovering(previous, redis) is previous
    assert platform_launcher.recovering({**previous, "redis": None}, redis) is None  # not fault tolerant before
    joined = {**previous, "role": platform_launcher.ROLE_MEMBER}  # a node added with --join
    assert platform_launcher.recovering(joined, redis) is None
    assert platform_launcher.recovering(previous, None) is None  # this head without Redis: a fresh start
