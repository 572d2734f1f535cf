"""The buyer CLI (`dcluster login/logout/cluster ...`) and the demo's pure parts, on a fake platform
served through httpx.MockTransport: no Ray, no network."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest

import dcluster
from cli import cluster_watch, clusters, demo, durations, exits, output, session
from cli import main as cli_main

PASSWORD = "correct-horse-battery"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.secret-session-token.sig"
# A Ray token with everything a shell would trip over.
RAY_TOKEN = "tok 'with' \"quotes\" $HOME `id` ; rm -rf / \\ end"


class FakePlatform:
    """Just enough of the platform's API: accounts, clusters that move on as they are polled."""

    def __init__(self):
        self.clusters: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = {}
        self.requests: list[httpx.Request] = []
        self.fail_next_launch: str | None = None
        self.stuck = False  # clusters never leave provisioning
        self.degrade = False  # clusters come up short of a worker
        self.has_extend = True
        self.capacity_workers = 8
        self.next_event_id = 1

    # --- plumbing ------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _event(self, cid: str, kind: str, message: str) -> None:
        self.events[cid].append({"id": self.next_event_id, "ts": time.time(), "kind": kind, "message": message})
        self.next_event_id += 1

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if path == "/v1/usage" and method == "GET":
            assert float(request.url.params["end"]) - float(request.url.params["start"]) == pytest.approx(86_400, abs=5)
            return httpx.Response(
                200,
                json={
                    "role": "buyer",
                    "start": 0,
                    "end": 1,
                    "total": {"node_seconds": 120.0, "gpu_seconds": 60.0, "cpu_seconds": 120.0, "cost": 0.05},
                    "items": [
                        {
                            "cluster_id": "c-000000000001",
                            "nodes": 2,
                            "node_seconds": 120.0,
                            "gpu_seconds": 60.0,
                            "cpu_seconds": 120.0,
                            "cost": 0.05,
                        }
                    ],
                },
            )
        if path == "/v1/token" and method == "POST":
            form = dict(urllib.parse.parse_qsl(request.content.decode()))
            if form.get("password") != PASSWORD:
                return httpx.Response(401, json={"detail": "wrong username or password"})
            return httpx.Response(200, json={"access_token": TOKEN, "token_type": "bearer", "expires_in": 1800})
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"detail": "not signed in"})
        if path == "/v1/accounts/me":
            return httpx.Response(200, json={"id": 1, "username": "alice", "role": "buyer", "created_at": 0})
        if path == "/v1/accounts/1/quota":
            return self._quota(method, json.loads(request.content) if method == "PUT" else None)
        if path == "/v1/clusters" and method == "POST":
            return self._create(json.loads(request.content))
        if path == "/v1/clusters" and method == "GET":
            return httpx.Response(200, json=list(self.clusters.values()))
        m = re.fullmatch(r"/v1/clusters/([^/]+)(/[a-z]+)?", path)
        if not m:
            return httpx.Response(404, json={"detail": "Not Found"})
        cid, sub = m.group(1), m.group(2) or ""
        if not re.fullmatch(r"c-[0-9a-f]{12}", cid):
            return httpx.Response(
                422,
                json={
                    "detail": [
                        {
                            "loc": ["path", "cluster_id"],
                            "msg": "String should match pattern '^c-[0-9a-f]{12}$'",
                            "type": "x",
                        }
                    ]
                },
            )
        if sub == "/extend" and not self.has_extend:
            return httpx.Response(404, json={"detail": "Not Found"})
        if cid not in self.clusters:
            return httpx.Response(404, json={"detail": f"cluster {cid} not found"})
        c = self.clusters[cid]
        if sub == "" and method == "GET":
            self._advance(c)
            return httpx.Response(200, json=c)
        if sub == "" and method == "DELETE":
            if c["status"] in ("pending", "provisioning", "running"):
                c["status"] = "terminating"
                self._event(cid, "terminating", "tearing down: deleted by alice")
            return httpx.Response(200, json=c)
        if sub == "/events":
            after = int(request.url.params.get("after", 0))
            return httpx.Response(200, json=[e for e in self.events[cid] if e["id"] > after])
        if sub == "/connection":
            if c["status"] not in ("running", "degraded"):
                return httpx.Response(409, json={"detail": f"cluster {cid} is {c['status']}"})
            env = {"RAY_ADDRESS": "http://10.0.0.5:8265", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TOKEN}
            return httpx.Response(
                200,
                json={
                    "dashboard_url": env["RAY_ADDRESS"],
                    "job_submission_url": env["RAY_ADDRESS"],
                    "ray_client_address": "ray://10.0.0.5:10001",
                    "gcs_address": "10.0.0.5:6379",
                    "ray_auth_token": RAY_TOKEN,
                    "env": env,
                    "ray_job_submit": "...",
                    "dashboard_proxy_url": f"http://platform.test/v1/clusters/{cid}/dashboard/",
                    "metrics_proxy_url": f"http://platform.test/v1/clusters/{cid}/metrics",
                },
            )
        if sub == "/extend" and method == "POST":
            c["expires_at"] += json.loads(request.content)["duration_s"]
            return httpx.Response(200, json=c)
        return httpx.Response(405, json={"detail": "Method Not Allowed"})

    def _quota(self, method: str, body: dict | None) -> httpx.Response:
        if method == "PUT":
            return httpx.Response(403, json={"detail": "this route is for admin accounts; you are signed in as buyer"})
        limits = {"max_clusters": 2, "max_gpus": 64, "max_cpus": 1024, "max_gpu_hours": 1000.0, "period_s": 2592000}
        return httpx.Response(
            200,
            json={
                "account_id": 1,
                "username": "alice",
                "limits": limits,
                "overrides": {"max_clusters": 2, "max_gpus": None, "max_cpus": None, "max_gpu_hours": None},
                "used": {"clusters": 1, "gpus": 0, "cpus": 2, "gpu_hours": 0.0},
            },
        )

    def _create(self, body: dict) -> httpx.Response:
        if body.get("name") is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", body["name"]):
            return httpx.Response(
                422,
                json={
                    "detail": [
                        {
                            "loc": ["body", "name"],
                            "type": "string_pattern_mismatch",
                            "msg": "String should match pattern",
                        }
                    ]
                },
            )
        if body["num_workers"] > self.capacity_workers:
            return httpx.Response(
                409,
                json={
                    "detail": f"not enough capacity for {body['num_workers']} worker(s) "
                    f"plus a head; available: 8 CPUs on 2 machines"
                },
            )
        cid = "c-%012x" % (len(self.clusters) + 1)
        now = time.time()
        self.clusters[cid] = {
            "id": cid,
            "name": body.get("name") or cid,
            "status": "pending",
            "reason": None,
            "num_workers": body["num_workers"],
            "gpus_per_worker": body.get("gpus_per_worker", 0),
            "gpu_model": body.get("gpu_model"),
            "cpus_per_worker": body.get("cpus_per_worker", 1),
            "duration_s": body["duration_s"],
            "backend": body.get("backend", "market"),
            "created_at": now,
            "expires_at": now + body["duration_s"],
            "running_at": None,
            "ended_at": None,
            "workers_joined": 0,
            "head_node_ip": None,
            "nodes": [],
        }
        self.events[cid] = []
        self._event(cid, "created", "machines reserved: head on m-1, worker on m-2")
        return httpx.Response(202, json=self.clusters[cid])

    def _advance(self, c: dict) -> None:
        cid, status = c["id"], c["status"]
        if status == "pending":
            c["status"] = "provisioning"
            self._event(cid, "provisioning", "starting the head node with the Ray cluster launcher")
        elif status == "provisioning" and self.fail_next_launch:
            c["status"], c["reason"] = "terminating", self.fail_next_launch
            self._event(cid, "failed", self.fail_next_launch)
        elif status == "provisioning" and self.degrade:
            c["status"], c["reason"] = "degraded", "worker node lost: machine m-2 is offline"
        elif status == "provisioning" and not self.stuck:
            c["status"], c["workers_joined"], c["running_at"] = "running", c["num_workers"], time.time()
            c["nodes"] = [
                {
                    "id": f"l-{i:012x}",
                    "role": "head" if i == 0 else "worker",
                    "status": "open",
                    "node_type": None,
                    "tags": {},
                    "node_ip": "10.0.0.5",
                    "machine_id": f"m-{i}",
                    "gpus": 0,
                    "cpus": 1,
                    "joined": True,
                    "joined_at": time.time(),
                    "left_at": None,
                }
                for i in range(c["num_workers"] + 1)
            ]
            self._event(cid, "running", f"running: head and {c['num_workers']} worker(s) joined")
        elif status == "terminating":
            c["status"] = "failed" if c["reason"] else "terminated"
            c["ended_at"] = time.time()
            self._event(cid, c["status"], f"{c['status']}: all nodes released in 1.0 s")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.5)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    platform = FakePlatform()
    monkeypatch.setenv("DCLUSTER_CONFIG_DIR", str(tmp_path / "cfg"))
    for var in ("DCLUSTER_PASSWORD", "DCLUSTER_URL", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(
        session, "new_client", lambda url, trust=None: dcluster.Client(url, transport=platform.transport())
    )
    clock = FakeClock()
    monkeypatch.setattr(cluster_watch, "MONOTONIC", clock.monotonic)
    monkeypatch.setattr(cluster_watch, "SLEEP", clock.sleep)
    return platform


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def login(capsys, tmp_path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    code, _, err = run(
        capsys,
        "login",
        "--url",
        "http://platform.test",
        "--insecure",
        "--username",
        "alice",
        "--password-file",
        str(pw),
    )
    assert code == 0, err


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("90s", 90),
        ("3600", 3600),
        ("1d", 86400),
        ("1h0m30s", 3630),
        (" 45M ", 2700),
        ("2h15s", 7215),
    ],
)
def test_parse_duration(text, seconds):
    assert durations.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "30x", "1.5h", "-5", "0", "0m", "m", "30m2h", "1 h", "h1"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        durations.parse_duration(text)


def test_bad_duration_is_a_usage_error(fake, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["cluster", "create", "--workers", "1", "--duration", "soon"])
    assert exc.value.code == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err


# --- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, code",
    [
        (dcluster.ApiError(400, "bad"), 2),
        (dcluster.ApiError(401, "expired"), 3),
        (dcluster.ApiError(403, "wrong role"), 1),
        (dcluster.ApiError(404, "cluster c-1 not found"), 4),
        (dcluster.ApiError(409, "not enough capacity"), 5),
        (dcluster.ApiError(422, []), 2),
        (dcluster.ApiError(429, "slow down"), 1),
        (dcluster.ApiError(500, "internal"), 1),
        (dcluster.ApiError(503, "restarting"), 1),
        (dcluster.PlatformUnreachable("refused"), 7),
        (dcluster.ClientError("odd"), 1),
        (exits.CliError("ended", exits.Exit.CLUSTER_ENDED), 6),
        (exits.CliError("late", exits.Exit.TIMEOUT), 8),
        (RuntimeError("?"), 1),
    ],
)
def test_exit_code_mapping(exc, code):
    assert exits.exit_code_for(exc) == code


def test_exit_codes_are_documented_in_help():
    for number in range(9):
        assert re.search(rf"^  {number}  \S", exits.EXIT_CODES_HELP, re.M), number
    help_text = clusters.add_cluster(argparse.ArgumentParser().add_subparsers()).format_help()
    assert "Exit codes:" in help_text and "5  conflict" in help_text


def test_unreachable_platform_exits_7(fake, capsys, tmp_path, monkeypatch):
    login(capsys, tmp_path)

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(
        session, "new_client", lambda url, trust=None: dcluster.Client(url, transport=httpx.MockTransport(refuse))
    )
    code, out, err = run(capsys, "cluster", "list")
    assert code == 7 and out == ""
    assert "unreachable" in err


# --- session --------------------------------------------------------------------------------


def test_login_keeps_a_private_session_and_never_prints_secrets(fake, capsys, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir(mode=0o755)
    os.chmod(cfg, 0o755)
    login(capsys, tmp_path)
    path = cfg / "session.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["url"] == "http://platform.test" and saved["username"] == "alice" and saved["token"] == TOKEN
    assert saved["expires_at"] == pytest.approx(time.time() + 1800, abs=10)
    assert PASSWORD not in path.read_text()

    code, out, err = run(capsys, "login", "--json", "--password-file", str(tmp_path / "pw"))  # url/user remembered
    assert code == 0
    body = json.loads(out)
    assert body["username"] == "alice" and body["role"] == "buyer" and "token" not in body
    # Every command of a session: the token goes in the header, never to the terminal.
    for argv in (("cluster", "create", "--workers", "1", "--wait"), ("cluster", "list"), ("cluster", "list", "--json")):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert TOKEN not in out + err and PASSWORD not in out + err
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake.requests if r.url.path != "/v1/token")

    code, out, _ = run(capsys, "logout")
    assert code == 0 and not path.exists()
    code, _, err = run(capsys, "cluster", "list")
    assert code == 3 and "dcluster login" in err


def test_login_password_sources(fake, capsys, monkeypatch):
    monkeypatch.setenv("DCLUSTER_PASSWORD", PASSWORD)
    code, out, err = run(capsys, "login", "--url", "http://platform.test/", "--insecure", "--username", "alice")
    assert code == 0, err
    assert "signed in to http://platform.test as alice" in out and PASSWORD not in out + err
    monkeypatch.setenv("DCLUSTER_PASSWORD", "not-the-password")
    code, out, err = run(capsys, "login")
    assert code == 3 and "sign-in refused" in err and "not-the-password" not in out + err
    monkeypatch.delenv("DCLUSTER_PASSWORD")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    code, _, err = run(capsys, "login")
    assert code == 2 and "--password-file" in err


def test_login_needs_a_url(fake, capsys, monkeypatch):
    monkeypatch.setenv("DCLUSTER_PASSWORD", PASSWORD)
    code, _, err = run(capsys, "login", "--username", "alice")
    assert code == 2 and "--url" in err


def test_expired_or_corrupt_session_exits_3(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    path = tmp_path / "cfg" / "session.json"
    saved = json.loads(path.read_text())
    saved["expires_at"] = time.time() - 1
    path.write_text(json.dumps(saved))
    code, out, err = run(capsys, "cluster", "list", "--json")
    assert code == 3 and "expired" in err and json.loads(out)["exit_code"] == 3
    path.write_text("{not json")
    code, _, err = run(capsys, "cluster", "status", "c-000000000001")
    assert code == 3 and "dcluster login" in err
    assert not any(r.url.path.startswith("/v1/clusters") for r in fake.requests)


def test_token_refused_by_platform_exits_3(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    path = tmp_path / "cfg" / "session.json"
    saved = json.loads(path.read_text())
    saved["token"] = "forged"
    path.write_text(json.dumps(saved))
    code, _, err = run(capsys, "cluster", "list")
    assert code == 3 and "dcluster login" in err and "forged" not in err


# --- clusters -------------------------------------------------------------------------------


def test_create_wait_prints_events_then_an_evalable_environment(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, err = run(
        capsys, "cluster", "create", "--workers", "2", "--duration", "30m", "--name", "exp", "--python-version", "3.11",
        "--wait",
    )  # fmt: skip
    assert code == 0, err
    post = next(r for r in fake.requests if r.method == "POST" and r.url.path == "/v1/clusters")
    body = json.loads(post.content)
    assert body == {
        "num_workers": 2,
        "gpus_per_worker": 0,
        "cpus_per_worker": 1,
        "duration_s": 1800,
        "backend": "market",
        "name": "exp",
        "python_version": "3.11",
    }
    for kind in ("created", "provisioning", "running"):
        assert kind in err  # progress on stderr, in order
    assert err.index("provisioning") < err.index("running")
    lines = out.splitlines()
    assert [shlex.split(line)[0] for line in lines] == ["export"] * 3
    # The shell gets back exactly the values, quotes, dollars and backticks included.
    script = (
        f'eval "$(cat {shlex.quote(str(tmp_path / "env"))})"; printf "%s\\n%s\\n%s" '
        f'"$RAY_ADDRESS" "$RAY_AUTH_MODE" "$RAY_AUTH_TOKEN"'
    )
    (tmp_path / "env").write_text(out)
    shell = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}
    )
    assert shell.stdout.split("\n") == ["http://10.0.0.5:8265", "token", RAY_TOKEN]


def test_connect_is_evalable_and_json(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "cluster", "create", "--workers", "1", "--wait", "--json")
    assert code == 0
    created = json.loads(out)
    cid = created["id"]
    assert created["status"] == "running" and created["connection"]["env"]["RAY_AUTH_MODE"] == "token"
    code, out, _ = run(capsys, "cluster", "connect", cid)
    assert code == 0
    assert out.splitlines()[0] == "export RAY_ADDRESS=http://10.0.0.5:8265"
    parsed = dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines())
    assert parsed == {"RAY_ADDRESS": "http://10.0.0.5:8265", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TOKEN}
    code, out, _ = run(capsys, "cluster", "connect", cid, "--json")
    assert code == 0 and json.loads(out)["ray_auth_token"] == RAY_TOKEN


def test_dashboard_prints_where_the_dashboard_and_metrics_are_never_the_token(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "cluster", "create", "--workers", "1", "--wait", "--json")
    cid = json.loads(out)["id"]
    code, out, _ = run(capsys, "cluster", "dashboard", cid)
    assert code == 0 and "http://10.0.0.5:8265" in out and RAY_TOKEN not in out
    assert f"http://platform.test/v1/clusters/{cid}/dashboard/" in out and f"/v1/clusters/{cid}/metrics" in out
    code, out, _ = run(capsys, "cluster", "dashboard", cid, "--json")
    assert code == 0 and json.loads(out) == {
        "dashboard_url": "http://10.0.0.5:8265",
        "dashboard_proxy_url": f"http://platform.test/v1/clusters/{cid}/dashboard/",
        "metrics_proxy_url": f"http://platform.test/v1/clusters/{cid}/metrics",
    }


def test_export_lines_refuse_a_name_the_shell_would_run():
    with pytest.raises(ValueError):
        output.export_lines({"X; rm -rf ~": "1"})


def test_create_conflict_exits_5_with_the_platforms_detail(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, err = run(capsys, "cluster", "create", "--workers", "64")
    assert code == 5 and out == ""
    assert "not enough capacity for 64 worker(s)" in err
    code, out, err = run(capsys, "cluster", "create", "--workers", "64", "--json")
    assert code == 5
    assert json.loads(out) == {"error": json.loads(out)["error"], "exit_code": 5, "status_code": 409}
    assert "not enough capacity" in json.loads(out)["error"]


def test_invalid_request_names_the_flag_and_exits_2(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, _, err = run(capsys, "cluster", "create", "--workers", "1", "--name", "Not OK")
    assert code == 2 and "--name: String should match pattern" in err
    code, _, err = run(capsys, "cluster", "status", "nonsense")
    assert code == 2 and "cluster_id" in err


def test_create_wait_exits_6_when_the_cluster_fails(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    fake.fail_next_launch = "the cluster launcher failed: head did not start"
    code, out, err = run(capsys, "cluster", "create", "--workers", "1", "--wait", "--json")
    assert code == 6
    body = json.loads(out)
    assert body["exit_code"] == 6 and body["cluster"]["status"] == "terminating"
    assert "head did not start" in err


def test_create_wait_accepts_a_degraded_cluster_and_says_why(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    fake.degrade = True
    code, out, err = run(capsys, "cluster", "create", "--workers", "2", "--wait")
    assert code == 0 and "is degraded" in err and "machine m-2 is offline" in err


def test_create_wait_times_out_with_exit_8(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    fake.stuck = True
    code, _, err = run(capsys, "cluster", "create", "--workers", "1", "--wait", "--timeout", "5")
    assert code == 8 and "timed out after 5 s" in err and "provisioning" in err


def test_list_status_and_not_found(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "cluster", "list")
    assert code == 0 and out.strip() == "no clusters"
    run(capsys, "cluster", "create", "--workers", "2", "--gpus", "1", "--gpu-model", "NVIDIA A100", "--name", "big")
    run(capsys, "cluster", "create", "--workers", "1", "--wait")
    code, out, _ = run(capsys, "cluster", "list")
    rows = out.splitlines()
    assert code == 0 and rows[0].split() == ["ID", "NAME", "STATUS", "WORKERS", "GPUS", "EXPIRES", "IN"]
    assert rows[1].split()[:4] == ["c-000000000001", "big", "pending", "0/2"]
    assert "2 NVIDIA A100" in rows[1] and re.search(r"\b59m5\ds$|1h00m$", rows[1])
    assert rows[2].split()[:4] == ["c-000000000002", "c-000000000002", "running", "1/1"]
    # Aligned: every column starts where its header does.
    for header in ("STATUS", "WORKERS", "GPUS"):
        col = rows[0].index(header)
        assert all(r[col - 2 : col] == "  " and r[col] != " " for r in rows[1:])
    code, out, _ = run(capsys, "cluster", "list", "--json")
    assert [c["id"] for c in json.loads(out)] == ["c-000000000001", "c-000000000002"]
    code, out, _ = run(capsys, "cluster", "status", "c-000000000002")
    assert code == 0 and "is running" in out and "expires in" in out
    node_rows = out.split("  nodes:\n")[1].splitlines()
    assert node_rows[0].split() == ["NODE", "ROLE", "STATUS", "MACHINE", "IP", "GPUS", "CPUS", "JOINED"]
    assert [r.split()[1] for r in node_rows[1:]] == ["head", "worker"]
    code, out, err = run(capsys, "cluster", "status", "c-0000000000ff")
    assert code == 4 and out == "" and "not found" in err
    for argv in (("delete", "c-0000000000ff"), ("events", "c-0000000000ff"), ("connect", "c-0000000000ff")):
        assert run(capsys, "cluster", *argv)[0] == 4


def test_events_and_follow(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "cluster", "create", "--workers", "1", "--json")
    cid = json.loads(out)["id"]
    code, out, _ = run(capsys, "cluster", "events", cid, "--json")
    assert [e["kind"] for e in json.loads(out)] == ["created"]
    run(capsys, "cluster", "delete", cid)
    code, out, _ = run(capsys, "cluster", "events", cid, "--follow", "--json")
    assert code == 0
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]  # one JSON object per line
    assert kinds == ["created", "terminating", "terminated"]
    code, out, _ = run(capsys, "cluster", "events", cid)
    assert code == 0 and len(out.splitlines()) == 3 and "tearing down" in out


def test_delete_wait_and_connect_conflict(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "cluster", "create", "--workers", "1", "--json")
    cid = json.loads(out)["id"]
    code, _, err = run(capsys, "cluster", "connect", cid)
    assert code == 5 and "is pending" in err  # not running yet: a conflict
    code, out, err = run(capsys, "cluster", "delete", cid, "--wait", "--json")
    assert code == 0 and json.loads(out)["status"] == "terminated" and "terminating" in err
    assert "created" not in err  # the teardown's events, not the whole history
    code, out, _ = run(capsys, "cluster", "delete", cid)  # idempotent
    assert code == 0 and "is terminated" in out


def test_extend(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "cluster", "create", "--workers", "1", "--duration", "1h", "--json")
    created = json.loads(out)
    code, out, _ = run(capsys, "cluster", "extend", created["id"], "--duration", "30m", "--json")
    assert code == 0 and json.loads(out)["expires_at"] == created["expires_at"] + 1800
    assert json.loads(fake.requests[-1].content) == {"duration_s": 1800}
    fake.has_extend = False
    code, _, err = run(capsys, "cluster", "extend", created["id"], "--duration", "30m")
    assert code == 1 and "cannot extend clusters yet" in err


# --- demo helpers ---------------------------------------------------------------------------


def test_demo_job_env_drops_ray_variables_and_uses_a_private_home():
    env = demo.job_env(
        {
            "PATH": "/bin",
            "HOME": "/home/u",
            "RAY_ADDRESS": "ray://other:10001",
            "RAY_AUTH_TOKEN_PATH": "/home/u/.ray/auth_token",
            "RAY_NAMESPACE": "x",
        },
        {"RAY_ADDRESS": "http://h:8265", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t"},
        "/tmp/h",
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/tmp/h",
        "RAY_ADDRESS": "http://h:8265",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "t",
    }


def test_demo_machines_and_streaming(tmp_path, capsys):
    script = "printf '\\033[32mtrain shard 0\\033[39m\\n'; echo MACHINES m-1 m-2; exit 3"
    rc, lines = demo.run_streaming(["sh", "-c", script], {"PATH": os.environ["PATH"]}, timeout_s=30)
    assert rc == 3 and demo.machines_in(lines) == ["m-1", "m-2"]
    assert lines[0] == "train shard 0"  # without Ray's colour codes
    assert "  | MACHINES m-1 m-2" in capsys.readouterr().out
    assert demo.machines_in(["no machines here"]) == []
    # Every task's line counts, not only the training shards' summary.
    assert demo.machines_in(
        [
            "train shard 0 ran on machine m-0a1 (provider p)",
            "MACHINES m-0a1",
            "inference ran on machine m-0b2: prediction 47.258",
        ]
    ) == ["m-0a1", "m-0b2"]
    t0 = time.monotonic()
    rc, lines = demo.run_streaming(["sh", "-c", "echo start; sleep 30"], {"PATH": os.environ["PATH"]}, timeout_s=0.5)
    assert rc == 124 and time.monotonic() - t0 < 15


def test_demo_timings_table():
    timings = demo.Timings()
    timings.add("platform up", "reused")
    timings.add("POST -> running", 21.34)
    timings.add("DELETE -> terminated", None)
    rows = timings.table().splitlines()
    assert rows[0].split() == ["step", "time"]
    assert rows[1].split() == ["platform", "up", "reused"] and rows[2].endswith("21.3 s")
    assert rows[3].endswith("-") and rows[4].startswith("total")


def test_usage_table_and_json(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "usage", "--since", "24h")
    assert code == 0
    assert "c-000000000001" in out and "total" in out and "0.0500" in out
    code, out, _ = run(capsys, "usage", "--since", "1d", "--json")
    assert code == 0 and json.loads(out)["total"]["cost"] == 0.05


def test_quota_show_and_set(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "quota", "show")
    assert code == 0 and "alice" in out and "30 days" in out
    row = next(line for line in out.splitlines() if line.startswith("max_clusters"))
    assert row.split()[:3] == ["max_clusters", "1", "2"] and "admin" in row
    code, out, _ = run(capsys, "quota", "show", "--account", "1", "--json")
    assert code == 0 and json.loads(out)["limits"]["max_gpus"] == 64
    code, _, err = run(capsys, "quota", "set", "--account", "1", "--max-gpus", "8")
    assert code == 1 and "admin accounts" in err
    put = fake.requests[-1]
    assert put.method == "PUT" and json.loads(put.content) == {
        "max_clusters": None,
        "max_gpus": 8,
        "max_cpus": None,
        "max_gpu_hours": None,
    }


def test_create_sends_the_price_ceilings(fake, capsys, tmp_path):
    login(capsys, tmp_path)
    code, _, _ = run(capsys, "cluster", "create", "--workers", "1", "--max-price-per-gpu-hour", "2.5")
    assert code == 0
    sent = json.loads(next(r for r in fake.requests if r.method == "POST" and r.url.path == "/v1/clusters").content)
    assert sent["max_price_per_gpu_hour"] == 2.5 and "max_price_per_cpu_hour" not in sent
