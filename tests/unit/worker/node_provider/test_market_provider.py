"""MarketNodeProvider and AgentCommandRunner against an httpx.MockTransport standing in for the platform."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import secrets
import shlex
import threading

import httpx
import pytest
from ray.autoscaler._private.command_runner import _with_environment_variables
from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

import dcluster
from tests import tls_server
from tests.protocols import assert_implements
from worker.node_provider import command_runner, market_provider, nodes_api

CID = "c-0123456789ab"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.provider-token-" + "s" * 24
URL = "http://platform.test"
PREFIX = f"/v1/clusters/{CID}/nodes"


def test_the_node_api_implements_what_the_command_runner_needs():
    assert_implements(command_runner.NodeExecutor, nodes_api.ClusterNodesApi)


class FakePlatform:
    """The platform's six node routes, in memory; records every request."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}
        self.requests: list[httpx.Request] = []
        self.exec_results: list[dict] = []  # answers for op=run, in order; default ok
        self.fail_with: list[Exception | int] = []  # next requests: raise this / answer this status
        self.capacity = 100

    def add(self, role="worker", status="open", node_ip="10.0.0.1", **tags) -> str:
        nid = "l-" + secrets.token_hex(6)
        self.nodes[nid] = {
            "id": nid,
            "role": role,
            "status": status,
            "node_type": role,
            "node_ip": node_ip,
            "machine_id": "m-1",
            "tags": {TAG_RAY_NODE_KIND: role, **tags},
        }
        return nid

    def calls(self, method: str | None = None, path: str | None = None) -> list[httpx.Request]:
        return [
            r for r in self.requests if (method is None or r.method == method) and (path is None or r.url.path == path)
        ]

    def body(self, request: httpx.Request) -> dict:
        return json.loads(request.content)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with:
            failure = self.fail_with.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, json={"detail": f"status {failure}"})
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"detail": "bad token"})
        path = request.url.path
        assert path.startswith(PREFIX), path
        rest = path[len(PREFIX) :].strip("/").split("/")
        if rest == [""]:
            if request.method == "GET":
                return httpx.Response(200, json=list(self.nodes.values()))
            body = self.body(request)
            if body["count"] > self.capacity:
                return httpx.Response(409, json={"detail": "no machine has 8 free GPUs"})
            created = [self.nodes[self.add(body["role"], **body["tags"])] for _ in range(body["count"])]
            return httpx.Response(201, json=created)
        nid = rest[0]
        if nid not in self.nodes:
            return httpx.Response(404, json={"detail": "no such node"})
        node = self.nodes[nid]
        if len(rest) == 1 and request.method == "PATCH":
            node["tags"].update(self.body(request)["tags"])
            return httpx.Response(200, json=node)
        if len(rest) == 1 and request.method == "DELETE":
            node["status"] = "closed"
            return httpx.Response(200, json=node)
        if rest[1:] == ["exec"]:
            body = self.body(request)
            if body["op"] == "run" and self.exec_results:
                return httpx.Response(200, json=self.exec_results.pop(0))
            return httpx.Response(200, json={"ok": True, "exit_code": 0, "output": "", "data": {}})
        return httpx.Response(405)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def platform(monkeypatch):
    fake = FakePlatform()
    monkeypatch.setattr(
        market_provider.MarketNodeProvider,
        "make_client",
        classmethod(lambda cls, url, trust: dcluster.Client(url, transport=httpx.MockTransport(fake.handle))),
    )
    return fake


@pytest.fixture
def fake_clock():
    return FakeClock()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def provider(platform, fake_clock, sleeps):
    config = {
        "type": "external",
        "module": "worker.node_provider.market_provider.MarketNodeProvider",
        "platform_url": URL,
        "cluster_id": CID,
        "token": TOKEN,
    }
    return market_provider.MarketNodeProvider(config, CID, clock=fake_clock, sleep=sleeps.append)


def runner(provider, node_id):
    return provider.get_command_runner("NodeUpdater: x: ", node_id, {"ssh_user": "dcluster"}, CID, None, False)


# --- provider: nodes -----------------------------------------------------------------------


def test_create_node_posts_role_type_tags_count_and_returns_nothing(provider, platform):
    tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "worker", TAG_RAY_NODE_STATUS: "uninitialized"}
    assert provider.create_node({"role": "worker"}, tags, 3) is None
    (post,) = platform.calls("POST", PREFIX)
    assert platform.body(post) == {"role": "worker", "node_type": "worker", "tags": tags, "count": 3}
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert len(provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})) == 3


def test_v2_entry_point_creates_through_the_same_route(provider, platform):
    tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "gpu"}
    assert provider.create_node_with_resources_and_labels({"role": "worker"}, tags, 2, {"GPU": 1}, {"a": "b"}) is None
    (post,) = platform.calls("POST", PREFIX)
    assert platform.body(post) == {"role": "worker", "node_type": "gpu", "tags": tags, "count": 2}


def test_role_falls_back_to_the_node_kind_tag_and_must_be_known(provider, platform):
    provider.create_node({}, {TAG_RAY_NODE_KIND: NODE_KIND_HEAD}, 1)
    assert platform.body(platform.calls("POST")[0])["role"] == "head"
    assert platform.body(platform.calls("POST")[0])["node_type"] == "head"
    with pytest.raises(ValueError, match="role"):
        provider.create_node({"role": "boss"}, {}, 1)


def test_non_terminated_nodes_filters_by_tags_and_status(provider, platform):
    head = platform.add("head", **{TAG_RAY_USER_NODE_TYPE: "head"})
    w1 = platform.add("worker", **{TAG_RAY_USER_NODE_TYPE: "worker"})
    platform.add("worker", status="closed", **{TAG_RAY_USER_NODE_TYPE: "worker"})
    platform.add("worker", status="lost", **{TAG_RAY_USER_NODE_TYPE: "worker"})
    assert provider.non_terminated_nodes({}) == [head, w1]
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER}) == [w1]
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: "head"}) == [head]
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: "x"}) == []


def test_reads_are_served_from_the_cache_within_its_ttl(provider, platform, fake_clock):
    nid = platform.add("worker", foo="1")
    assert provider.non_terminated_nodes({}) == [nid]
    for _ in range(5):
        assert provider.is_running(nid) and not provider.is_terminated(nid)
        assert provider.node_tags(nid)["foo"] == "1"
        assert provider.internal_ip(nid) == provider.external_ip(nid) == "10.0.0.1"
    assert len(platform.calls("GET")) == 1
    fake_clock.now += market_provider.CACHE_TTL_S + 0.1
    provider.node_tags(nid)
    assert len(platform.calls("GET")) == 2


def test_create_terminate_and_set_tags_invalidate_the_cache(provider, platform):
    assert provider.non_terminated_nodes({}) == []
    provider.create_node({"role": "head"}, {TAG_RAY_NODE_KIND: NODE_KIND_HEAD}, 1)
    (head,) = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD})  # no waiting for the TTL
    provider.set_node_tags(head, {TAG_RAY_NODE_STATUS: "up-to-date"})
    assert provider.node_tags(head)[TAG_RAY_NODE_STATUS] == "up-to-date"
    assert platform.body(platform.calls("PATCH")[0]) == {"tags": {TAG_RAY_NODE_STATUS: "up-to-date"}}
    provider.terminate_node(head)
    assert provider.non_terminated_nodes({}) == []
    assert provider.is_terminated(head) and not provider.is_running(head)


def test_node_tags_returns_a_copy(provider, platform):
    nid = platform.add("head", **{"ray-runtime-config": "h"})
    provider.node_tags(nid)["ray-runtime-config"] += "-invalidate"  # what the updater does with it
    assert provider.node_tags(nid)["ray-runtime-config"] == "h"


def test_a_node_created_elsewhere_is_found_by_listing_again(provider, platform, fake_clock):
    provider.non_terminated_nodes({})
    nid = platform.add("worker")  # e.g. by the head's autoscaler
    fake_clock.now += market_provider.MIN_REFRESH_S + 0.01
    assert provider.is_running(nid)
    assert provider.node_tags("l-000000000000") == {}
    assert provider.is_terminated("l-000000000000")


def test_no_capacity_raises_a_clear_picklable_error(provider, platform):
    platform.capacity = 0
    with pytest.raises(nodes_api.NoCapacityError, match="no capacity") as info:
        provider.create_node({"role": "worker"}, {TAG_RAY_NODE_KIND: NODE_KIND_WORKER}, 2)
    assert isinstance(info.value, NodeLaunchException) and info.value.category == "NoCapacity"
    assert "no machine has 8 free GPUs" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))  # the launcher runs in a Ray task
    assert str(copy) == str(info.value) and copy.count == 2 and copy.cluster_id == CID
    assert len(platform.calls("POST")) == 1  # a refusal is not retried here: the autoscaler decides


def test_rejected_token_names_the_cause(provider, platform):
    platform.fail_with = [401]
    with pytest.raises(nodes_api.PlatformError, match="token") as info:
        provider.non_terminated_nodes({})
    assert info.value.status_code == 401
    assert pickle.loads(pickle.dumps(info.value)).status_code == 401


def test_terminate_tolerates_gone_nodes_and_terminates_the_rest(provider, platform):
    nid = platform.add("worker")
    assert provider.terminate_nodes(["l-000000000000", nid]) is None
    assert platform.nodes[nid]["status"] == "closed"
    assert [r.method for r in platform.calls("DELETE")] == ["DELETE", "DELETE"]


def test_terminate_nodes_tries_every_node_before_raising(provider, platform):
    a, b = platform.add("worker"), platform.add("worker")
    platform.fail_with = [400]
    with pytest.raises(nodes_api.PlatformError):
        provider.terminate_nodes([a, b])
    assert platform.nodes[b]["status"] == "closed"


def test_unreachable_platform_is_retried_for_reads(provider, platform, sleeps):
    nid = platform.add("worker")
    platform.fail_with = [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 503]
    assert provider.non_terminated_nodes({}) == [nid]
    assert len(platform.calls("GET")) == 4 and len(sleeps) == 3


def test_unreachable_platform_gives_up_with_a_clear_error(provider, platform):
    platform.fail_with = [httpx.ConnectError("refused")] * nodes_api.REQUEST_ATTEMPTS
    with pytest.raises(nodes_api.PlatformError, match="unreachable"):
        provider.non_terminated_nodes({})


def test_create_is_resent_only_when_it_never_arrived(provider, platform):
    platform.fail_with = [httpx.ConnectError("refused")]
    provider.create_node({"role": "worker"}, {}, 1)
    assert len(platform.calls("POST")) == 2 and len(platform.nodes) == 1
    platform.fail_with = [httpx.ReadTimeout("slow")]  # it may have been created: never send it twice
    with pytest.raises(nodes_api.PlatformError):
        provider.create_node({"role": "worker"}, {}, 1)
    assert len(platform.calls("POST")) == 3


def test_get_node_id_by_ip_refuses_to_guess_between_leases_on_one_machine(provider, platform):
    a = platform.add("worker", node_ip="10.0.0.5")
    b = platform.add("worker", node_ip="10.0.0.6")
    platform.add("worker", node_ip="10.0.0.6")
    assert provider.get_node_id("10.0.0.5") == a
    assert provider.get_node_id(b) == b
    with pytest.raises(ValueError, match="shared"):
        provider.get_node_id("10.0.0.6")
    with pytest.raises(ValueError, match="not found"):
        provider.get_node_id("10.9.9.9")


def test_concurrent_reads_and_writes_share_list_calls(provider, platform, fake_clock):
    ids = [platform.add("worker") for _ in range(4)]
    errors = []

    def work(i):
        try:
            for _ in range(50):
                provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
                provider.node_tags(ids[i % 4])
                provider.set_node_tags(ids[i % 4], {"n": str(i)})
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(provider.non_terminated_nodes({})) == 4


def test_config_needs_url_cluster_and_token(platform):
    with pytest.raises(ValueError, match="render_market_config"):
        market_provider.MarketNodeProvider({"type": "external", "cluster_id": CID}, CID)
    with pytest.raises(ValueError, match="cluster id"):
        market_provider.MarketNodeProvider({"platform_url": URL, "cluster_id": "x", "token": TOKEN}, "x")


def test_repr_never_shows_the_token(provider):
    assert TOKEN not in repr(provider)


def test_teardown_cleanup_removes_the_launchers_config_cache(platform, tmp_path):
    cache = tmp_path / ("ray-config-" + "a" * 64)
    config = {"platform_url": URL, "cluster_id": CID, "token": TOKEN, "_config_cache_path": str(cache)}
    cache.write_text(json.dumps({"_version": 1, "config": {"provider": config}}))
    market_provider.MarketNodeProvider(config, CID).cleanup_cluster_resources()
    assert not cache.exists()
    other = tmp_path / "ray-config-other"
    other.write_text("{}")
    market_provider.MarketNodeProvider({**config, "_config_cache_path": str(other)}, CID).cleanup_cluster_resources()
    assert other.exists()


def test_docker_is_refused(provider, platform):
    with pytest.raises(ValueError, match="docker"):
        provider.get_command_runner("p", "l-0", {}, CID, None, False, {"container_name": "ray"})
    assert isinstance(runner(provider, "l-0"), command_runner.AgentCommandRunner)


# --- runner --------------------------------------------------------------------------------


def test_run_encodes_env_like_the_ssh_runner(provider, platform):
    nid = platform.add("head")
    env = {
        "RAY_OVERRIDE_RESOURCES": {"CPU": 0, "GPU": 0},
        "RAY_USAGE_STATS_ENABLED": 0,
        "RAY_OVERRIDE_LABELS": {"dcluster.io/cluster": CID},
        "PLAIN": "a b",
    }
    assert runner(provider, nid).run("ray start --head", environment_variables=env) == ""
    (call,) = platform.calls("POST", f"{PREFIX}/{nid}/exec")
    body = platform.body(call)
    assert body["op"] == "run" and body["cmd"] == "ray start --head" and body["timeout_s"] == 120
    assert body["env"]["PLAIN"] == "a b"
    for key, value in env.items():
        if not isinstance(value, str):  # what SSHCommandRunner exports, byte for byte
            assert _with_environment_variables("", {key: value}) == f"export {key}={shlex.quote(body['env'][key])};"
    assert body["env"]["RAY_OVERRIDE_RESOURCES"] == '{"CPU":0,"GPU":0}'


def test_run_timeout_bounds_the_command_and_the_http_read(provider, platform):
    nid = platform.add("head")
    runner(provider, nid).run("uptime", timeout=10)
    (call,) = platform.calls("POST", f"{PREFIX}/{nid}/exec")
    assert platform.body(call)["timeout_s"] == 10
    assert call.extensions["timeout"]["read"] == 10 + nodes_api.EXEC_READ_MARGIN_S


@pytest.mark.parametrize("exit_on_fail", [False, True])
def test_nonzero_exit_raises_process_runner_error(provider, platform, exit_on_fail):
    nid = platform.add("head")
    platform.exec_results = [{"ok": False, "exit_code": 3, "output": "boom", "data": {}}]
    with pytest.raises(ProcessRunnerError) as info:
        runner(provider, nid).run("false", exit_on_fail=exit_on_fail)
    assert info.value.msg_type == "ssh_command_failed" and info.value.code == 3
    assert info.value.command == "false"


def test_a_command_the_agent_could_not_run_is_a_failure(provider, platform):
    nid = platform.add("head")
    platform.exec_results = [{"ok": False, "exit_code": None, "output": "lease is closing", "data": {}}]
    with pytest.raises(ProcessRunnerError, match="lease is closing") as info:
        runner(provider, nid).run("true")
    assert info.value.msg_type == "ssh_command_failed" and info.value.code is None


def test_with_output_returns_bytes(provider, platform):
    nid = platform.add("head")
    platform.exec_results = [{"ok": True, "exit_code": 0, "output": "10.0.0.1\n", "data": {}}]
    assert runner(provider, nid).run("hostname -I", with_output=True) == b"10.0.0.1\n"


def test_nothing_to_run_and_no_shutdown(provider, platform):
    nid = platform.add("head")
    r = runner(provider, nid)
    assert r.run(None, port_forward=[(8265, 8265)]) == ""
    r.run("true", shutdown_after_run=True)
    assert platform.body(platform.calls("POST")[0])["cmd"] == "true"  # never `sudo shutdown`
    assert r.run_init(as_head=True, file_mounts={}, sync_run_yet=True) is None
    assert "no remote shell" in r.remote_shell_command_str()


def test_unreachable_platform_fails_the_command_after_retries(provider, platform, sleeps):
    nid = platform.add("head")
    platform.fail_with = [httpx.ConnectError("refused")] * nodes_api.REQUEST_ATTEMPTS
    with pytest.raises(ProcessRunnerError, match="unreachable") as info:
        runner(provider, nid).run("uptime")
    assert info.value.msg_type == "ssh_command_failed"
    assert len(platform.calls("POST")) == nodes_api.REQUEST_ATTEMPTS and len(sleeps) == 3


def test_a_command_that_may_have_run_is_not_sent_twice(provider, platform):
    nid = platform.add("head")
    platform.fail_with = [httpx.ReadTimeout("slow")]
    with pytest.raises(ProcessRunnerError, match="unreachable"):
        runner(provider, nid).run("ray start --head")
    assert len(platform.calls("POST")) == 1


def test_a_closed_lease_fails_the_command(provider, platform):
    with pytest.raises(ProcessRunnerError, match="404") as info:
        runner(provider, "l-000000000000").run("uptime")
    assert info.value.msg_type == "ssh_command_failed"


def test_rsync_up_sends_the_file_as_base64(provider, platform, tmp_path):
    nid = platform.add("head")
    src = tmp_path / "bootstrap.json"
    src.write_bytes(b'{"a": 1}\n\x00\xff')
    runner(provider, nid).run_rsync_up(str(src), "~/ray_bootstrap_config.yaml", {"rsync_exclude": None})
    (call,) = platform.calls("POST", f"{PREFIX}/{nid}/exec")
    assert platform.body(call) == {
        "op": "put_file",
        "path": "~/ray_bootstrap_config.yaml",
        "content_b64": base64.b64encode(src.read_bytes()).decode(),
    }


def test_rsync_up_of_a_directory_sends_each_file(provider, platform, tmp_path):
    nid = platform.add("head")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "b.txt").write_text("b")
    (tmp_path / "d" / "skip.pyc").write_text("x")
    runner(provider, nid).run_rsync_up(str(tmp_path / "d") + "/", "~/my dir/", {"rsync_exclude": ["*.pyc"]})
    bodies = [platform.body(c) for c in platform.calls("POST")]
    assert bodies[0]["op"] == "run" and bodies[0]["cmd"] == "mkdir -p ~/'my dir' ~/'my dir/sub'"
    assert {(b["path"], base64.b64decode(b["content_b64"])) for b in bodies[1:]} == {
        ("~/my dir/a.txt", b"a"),
        ("~/my dir/sub/b.txt", b"b"),
    }


def test_rsync_down_writes_the_remote_file(provider, platform, tmp_path):
    nid = platform.add("head")
    data = b"log line\n\x01"
    out = f"{len(data)}\n{command_runner.FILE_BEGIN}\n{base64.b64encode(data).decode()}\n{command_runner.FILE_END}\n"
    platform.exec_results = [{"ok": True, "exit_code": 0, "output": out, "data": {}}]
    runner(provider, nid).run_rsync_down("~/logs/x.log", str(tmp_path / "x.log"))
    assert (tmp_path / "x.log").read_bytes() == data
    assert "base64" in platform.body(platform.calls("POST")[0])["cmd"]


def test_rsync_down_detects_a_truncated_file(provider, platform, tmp_path):
    nid = platform.add("head")
    out = f"999999\n{command_runner.FILE_BEGIN}\n{base64.b64encode(b'abc').decode()}\n{command_runner.FILE_END}\n"
    platform.exec_results = [{"ok": True, "exit_code": 0, "output": out, "data": {}}]
    with pytest.raises(ProcessRunnerError, match="48 KiB"):
        runner(provider, nid).run_rsync_down("~/big", str(tmp_path / "big"))


def test_tokens_never_reach_the_logs(provider, platform, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    nid = platform.add("head")
    ray_token = "raytoken-" + "r" * 30
    platform.exec_results = [
        {"ok": True, "exit_code": 0, "output": f"provider: token: {TOKEN}\n", "data": {}},
        {"ok": False, "exit_code": 1, "output": f"RAY_AUTH_TOKEN={ray_token} {TOKEN}", "data": {}},
    ]
    r = runner(provider, nid)
    r.run("cat ~/ray_bootstrap_config.yaml", environment_variables={"RAY_AUTH_TOKEN": ray_token})
    with pytest.raises(ProcessRunnerError) as info:
        r.run(f"export RAY_AUTH_TOKEN={ray_token}; env", environment_variables={"RAY_AUTH_TOKEN_PATH": ray_token})
    platform.fail_with = [401]
    with pytest.raises(nodes_api.PlatformError) as refused:
        provider.create_node({"role": "worker"}, {}, 1)
    shown = caplog.text + capsys.readouterr().out + capsys.readouterr().err + str(info.value) + str(refused.value)
    assert "provider: token" in shown and "RAY_AUTH_TOKEN=***" in shown  # the output is there, redacted
    assert TOKEN not in shown and ray_token not in shown


def test_an_https_platform_is_reached_only_through_the_ca_in_the_provider_config():
    """The sub-cluster head's autoscaler: with platform_ca (as the platform renders it) the real platform
    answers; a server holding another CA's certificate at that address is refused, never retried."""
    platform_ca, attacker_ca = tls_server.Authority.make("platform CA"), tls_server.Authority.make("attacker CA")
    with tls_server.running(platform_ca) as server:
        config = {"platform_url": server.url, "cluster_id": CID, "token": TOKEN, "platform_ca": platform_ca.ca_pem}
        provider = market_provider.MarketNodeProvider(config, CID)
        assert provider.api.client.trust.ca_pem == platform_ca.ca_pem
        assert provider.api.client.healthz()
        server.serve(attacker_ca)
        attacked = market_provider.MarketNodeProvider(config, CID)
        with pytest.raises(dcluster.UntrustedPlatform, match="pinned certificate authority"):
            attacked.api.client.request("GET", "/healthz", auth=False)
        assert not dcluster.is_transient(dcluster.UntrustedPlatform("refused"))
