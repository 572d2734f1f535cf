"""The web console without Ray: pages render from the actors' answers, the cookie works only on the console,
and no action is taken without the same origin and the session's CSRF token."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from fastapi.testclient import TestClient

from actors.access import auth
from dcl_core import domain, errors
from dcl_core.cluster_spec import ClusterSpec
from serve_app import app as app_mod
from serve_app.console import charts
from serve_app.console import session as sess

SECRET = "s" * 48
BASE = "http://testserver"
NOW = time.time()


class _Method:
    def __init__(self, fn):
        self._fn = fn
        self.calls = []

    def remote(self, *args):
        self.calls.append(args)

        async def call():
            return self._fn(*args)

        return call()


def _cluster(cid="c-0123456789ab", status="running", **kw) -> dict:
    return {
        "id": cid,
        "name": "demo",
        "status": status,
        "reason": None,
        "num_workers": 1,
        "gpus_per_worker": 0,
        "gpu_model": None,
        "cpus_per_worker": 1,
        "duration_s": 1800,
        "backend": "market",
        "created_at": NOW - 60,
        "expires_at": NOW + 1740,
        "running_at": NOW - 40,
        "ended_at": None,
        "workers_joined": 1,
        "head_node_ip": "127.0.0.1",
        "nodes": [],
        "ray_version": "2.60.0",
        "python_version": "3.11",
        **kw,
    }


class FakeRegistry:
    def __init__(self):
        self.issuer = auth.TokenIssuer(SECRET)
        self.accounts = {
            "alice": (1, domain.Role.BUYER),
            "pat": (2, domain.Role.PROVIDER),
            "admin": (3, domain.Role.ADMIN),
        }
        self.signing_secret = _Method(lambda: SECRET)
        self.login = _Method(self._login)
        self.list_offers = _Method(
            lambda: [
                {
                    "gpu_model": "NVIDIA A100",
                    "machines": 2,
                    "gpus": 16,
                    "cpus": 128,
                    "memory_mb": 1_048_576,
                    "price_per_gpu_hour_min": 1.1,
                    "price_per_gpu_hour_max": 1.5,
                    "price_per_cpu_hour_min": 0.0,
                    "price_per_cpu_hour_max": 0.0,
                    "verified_gpus": 8,
                    "gpu_verification": {"verified": 1, "declared": 1},
                    "ray_version": "2.60.0",
                    "python_version": "3.11",
                    "launchable": True,
                },
                {
                    "gpu_model": None,
                    "machines": 1,
                    "gpus": 0,
                    "cpus": 4,
                    "memory_mb": 8192,
                    "price_per_gpu_hour_min": 0.0,
                    "price_per_gpu_hour_max": 0.0,
                    "price_per_cpu_hour_min": 0.01,
                    "price_per_cpu_hour_max": 0.01,
                    "ray_version": "2.9.3",
                    "python_version": "3.10",
                    "launchable": False,
                },
            ]
        )
        self.list_machines = _Method(
            lambda p: [
                {
                    "id": "m-0123456789ab",
                    "provider_id": 2,
                    "provider": "pat",
                    "name": "box-1",
                    "status": "online",
                    "spec": {"hostname": "box", "cpus": 4, "memory_mb": 8192, "gpus": [], "gpus_declared": False},
                    "price_per_gpu_hour": 0.0,
                    "price_per_cpu_hour": 0.01,
                    "registered_at": NOW - 100,
                    "last_heartbeat": NOW - 1,
                    "usage": {"cpu_percent": 12.0, "memory_used_mb": 1, "gpu_utilization": [], "active_leases": 2},
                    "gpu_verification": {"status": "no_gpus", "differences": []},
                },
                {
                    "id": "m-0123456789ac",
                    "provider_id": 2,
                    "provider": "pat",
                    "name": "box-2",
                    "status": "online",
                    "spec": {
                        "hostname": "box2",
                        "cpus": 8,
                        "memory_mb": 8192,
                        "gpus_declared": False,
                        "gpus": [{"index": 0, "model": "NVIDIA H200", "memory_mb": 143771}],
                    },
                    "price_per_gpu_hour": 2.0,
                    "price_per_cpu_hour": 0.01,
                    "registered_at": NOW - 100,
                    "last_heartbeat": NOW - 1,
                    "usage": None,
                    "gpu_verification": {
                        "status": "mismatch",
                        "reason": "what the check lease saw differs",
                        "differences": ["GPU 0 model: claimed 'NVIDIA H200', seen 'NVIDIA L4'"],
                    },
                },
            ]
        )
        self.list_accounts = _Method(self._list_accounts)

    def _login(self, username, password, client=None):
        if username not in self.accounts or password != "password123":
            raise errors.Unauthenticated("wrong username or password")
        account_id, role = self.accounts[username]
        return {
            "access_token": self.issuer.issue(auth.Principal(account_id, username, role)),
            "token_type": "bearer",
            "expires_in": 1800,
        }

    def _list_accounts(self, principal):
        if principal.role is not domain.Role.ADMIN:
            raise errors.Forbidden("admins only")
        return [{"id": i, "username": u, "role": r.value, "created_at": NOW} for u, (i, r) in self.accounts.items()]


class FakeClusters:
    def __init__(self):
        self.clusters = {"c-0123456789ab": _cluster()}
        self.create_cluster = _Method(self._create)
        self.list_clusters = _Method(lambda p: list(self.clusters.values()))
        self.get_cluster = _Method(lambda p, cid: self._get(cid))
        self.delete_cluster = _Method(self._delete)
        self.extend_cluster = _Method(lambda p, cid, d: self._get(cid))
        self.cluster_events = _Method(
            lambda p, cid, after: [
                {"id": 1, "ts": NOW - 59, "kind": "reserved", "message": "head and 1 worker reserved"},
                {"id": 2, "ts": NOW - 40, "kind": "running", "message": "every worker joined"},
            ]
        )
        self.connection = _Method(
            lambda p, cid: {
                "dashboard_url": "http://127.0.0.1:8265",
                "job_submission_url": "http://127.0.0.1:8265",
                "ray_client_address": "ray://127.0.0.1:10001",
                "gcs_address": "127.0.0.1:6379",
                "ray_auth_token": "tok-secret",
                "dashboard_proxy_url": f"{BASE}/v1/clusters/{cid}/dashboard/",
                "metrics_proxy_url": f"{BASE}/v1/clusters/{cid}/metrics",
                "env": {"RAY_ADDRESS": "http://127.0.0.1:8265", "RAY_AUTH_TOKEN": "tok-secret"},
                "ray_job_submit": "RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- python train.py",
            }
        )
        self.usage = _Method(
            lambda p, start, end: {
                "role": "provider" if p.role is domain.Role.PROVIDER else p.role.value,
                "start": start,
                "end": end,
                "total": {
                    "node_seconds": 3600.0,
                    "gpu_seconds": 0.0,
                    "cpu_seconds": 3600.0,
                    ("earnings" if p.role is domain.Role.PROVIDER else "cost"): 0.25,
                },
                "items": [],
            }
        )
        self.overrides = {1: {"max_clusters": None, "max_gpus": 4, "max_cpus": None, "max_gpu_hours": None}}
        self.get_quota = _Method(lambda p, account_id: self._quota(account_id))
        self.set_quota = _Method(self._set_quota)

    def _quota(self, account_id):
        limits = {"max_clusters": 5, "max_gpus": 16, "max_cpus": 64, "max_gpu_hours": 720.0, "period_s": 2_592_000}
        overrides = self.overrides.setdefault(account_id, dict.fromkeys(limits.keys() - {"period_s"}))
        limits.update({k: v for k, v in overrides.items() if v is not None})
        return {
            "account_id": account_id,
            "username": "alice",
            "limits": limits,
            "overrides": overrides,
            "used": {"clusters": 1, "gpus": 2, "cpus": 3, "gpu_hours": 1.5},
        }

    def _set_quota(self, principal, account_id, overrides):
        if principal.role is not domain.Role.ADMIN:
            raise errors.Forbidden("only an admin sets quotas")
        self.overrides[account_id] = overrides
        return self._quota(account_id)

    def _get(self, cid):
        if cid not in self.clusters:
            raise errors.NotFound(f"cluster {cid} not found")
        return self.clusters[cid]

    def _create(self, principal, spec):
        assert isinstance(spec, ClusterSpec), "the console hands the control plane the validated spec itself"
        if spec.num_workers > 8:
            raise errors.Conflict("not enough capacity: 2 machines online")
        cluster = _cluster("c-00000000beef", "pending", workers_joined=0, running_at=None)
        self.clusters[cluster["id"]] = cluster
        return cluster

    def _delete(self, principal, cid):
        self._get(cid)["status"] = "terminating"
        return self.clusters[cid]


@pytest.fixture
def fakes():
    return FakeRegistry(), FakeClusters()


@pytest.fixture
def client(fakes):
    return TestClient(app_mod.create_app(*fakes), base_url=BASE)


def sign_in(client: TestClient, username="alice") -> str:
    r = client.post("/login", data={"username": username, "password": "password123"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.cookies[sess.COOKIE_NAME]


def csrf_of(page: str) -> str:
    return re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', page).group(1)


def test_a_stranger_is_sent_to_the_sign_in_form(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = client.get("/console/clusters", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["HX-Redirect"] == "/login"
    assert "Sign in" in client.get("/login").text


def test_sign_in_sets_an_httponly_strict_cookie_and_a_wrong_password_shows_why(client):
    r = client.post(
        "/login",
        data={"username": "alice", "password": "password123"},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert "Secure" in r.headers["set-cookie"]  # the browser's side of a TLS proxy
    client.cookies.clear()
    r = client.post("/login", data={"username": "alice", "password": "nope-nope"})
    assert r.status_code == 401 and "wrong username or password" in r.text
    r = client.post("/login", data={"username": "alice", "password": "password123"}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=1800" in cookie


def test_the_api_never_accepts_the_console_cookie(client):
    sign_in(client)
    r = client.get("/v1/clusters")  # the cookie travels, no bearer header
    assert r.status_code == 401
    r = client.post("/v1/clusters", json={"num_workers": 1, "duration_s": 600})
    assert r.status_code == 401


def test_buyer_home_lists_offers_clusters_and_spend(client):
    sign_in(client)
    page = client.get("/")
    assert page.status_code == 200 and "Marketplace" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    # No CDN: every asset and link is the platform's own.
    assert links and all(u == "data:," or (u.startswith("/") and not u.startswith("//")) for u in links), links
    offers = client.get("/console/offers").text
    assert "NVIDIA A100" in offers and "1.10 – 1.50" in offers and "CPU only" in offers
    assert "8 of 16" in offers and "1 verified, 1 declared" in offers  # GPUs verified, machines by status
    assert "2.60.0 / 3.11</td>" in offers and "2.9.3 / 3.10 (not launched here)" in offers  # what leases run
    assert "CPU only" not in client.get("/console/offers", params={"gpu_only": "true"}).text
    assert "No offer matches" in client.get("/console/offers", params={"max_price": "1.0", "gpu_only": "true"}).text
    assert "c-0123456789ab" in client.get("/console/clusters").text
    usage = client.get("/console/usage", params={"window": "7d"}).text
    assert "<svg" in usage and "Spend per day" in usage and "$0.2500" in usage


def test_cluster_status_shows_steps_and_the_exact_submit_line(client):
    sign_in(client)
    page = client.get("/console/clusters/c-0123456789ab/status").text
    assert "every worker joined" in page and 'data-status="running"' in page
    assert '<div id="runtime">Ray 2.60.0 on Python 3.11</div>' in page
    assert "ray job submit --working-dir . -- python train.py" in page
    assert '<div class="mono" id="conn-metrics">http://testserver/v1/clusters/c-0123456789ab/metrics</div>' in page
    # The token shows shortened; the hidden fields behind the copy buttons hold the whole text.
    assert "export RAY_AUTH_TOKEN=tok-se…" in page
    assert re.search(r'<textarea id="conn-env" hidden readonly>[^<]*export RAY_AUTH_TOKEN=tok-secret', page)
    assert 'hx-trigger="every 10s"' in page


def test_actions_need_the_csrf_token_and_the_same_origin(client, fakes):
    sign_in(client)
    token = csrf_of(client.get("/").text)
    form = {"num_workers": "1", "duration_s": "1800"}
    assert client.post("/console/clusters", data=form).status_code == 403  # no token
    assert client.post("/console/clusters", data=form, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    r = client.post("/console/clusters", data=form, headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.post("/console/clusters", data=form, headers={"X-CSRF-Token": token, "Origin": "null"})
    assert r.status_code == 403  # a sandboxed or file:// page
    r = client.post(
        "/console/clusters", data=form, headers={"X-CSRF-Token": token, "Referer": "http://testserver.evil.example/x"}
    )
    assert r.status_code == 403
    assert fakes[1].create_cluster.calls == []
    r = client.post("/console/clusters", data=form, headers={"X-CSRF-Token": token, "Origin": BASE})
    assert r.status_code == 204 and r.headers["HX-Redirect"] == "/console/clusters/c-00000000beef"
    assert fakes[1].create_cluster.calls[0][1].num_workers == 1


def test_the_create_form_sends_price_ceilings_and_min_reliability_and_empty_means_any(client, fakes):
    sign_in(client)
    page = client.get("/").text
    for field in ("max_price_per_gpu_hour", "max_price_per_cpu_hour", "min_reliability"):
        assert f'name="{field}"' in page
    headers = {"X-CSRF-Token": csrf_of(page), "HX-Request": "true"}
    form = {
        "num_workers": "1",
        "duration_s": "1800",
        "max_price_per_gpu_hour": "1.5",
        "max_price_per_cpu_hour": "0.02",
        "min_reliability": "0.95",
    }
    assert client.post("/console/clusters", data=form, headers=headers).status_code == 204
    spec = fakes[1].create_cluster.calls[-1][1]
    assert (spec.max_price_per_gpu_hour, spec.max_price_per_cpu_hour, spec.min_reliability) == (
        1.5,
        0.02,
        0.95,
    )
    empty = {**form, "max_price_per_gpu_hour": "", "max_price_per_cpu_hour": " ", "min_reliability": ""}
    assert client.post("/console/clusters", data=empty, headers=headers).status_code == 204
    spec = fakes[1].create_cluster.calls[-1][1]
    assert spec.max_price_per_gpu_hour is spec.max_price_per_cpu_hour is spec.min_reliability is None
    calls = len(fakes[1].create_cluster.calls)
    for field, bad in (
        ("min_reliability", "1.5"),
        ("min_reliability", "nan"),
        ("max_price_per_gpu_hour", "-1"),
        ("max_price_per_cpu_hour", "cheap"),
        ("max_price_per_gpu_hour", "inf"),
    ):
        r = client.post("/console/clusters", data={**form, field: bad}, headers=headers)
        assert r.status_code == 422 and field in r.text, (field, bad, r.status_code, r.text)
    assert len(fakes[1].create_cluster.calls) == calls  # nothing bad reached the control plane


def test_a_sign_in_from_another_origin_is_refused(client):
    r = client.post(
        "/login",
        data={"username": "alice", "password": "password123"},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403 and sess.COOKIE_NAME not in r.headers.get("set-cookie", "")


def test_platform_errors_show_in_the_page_with_their_status(client):
    sign_in(client)
    headers = {"X-CSRF-Token": csrf_of(client.get("/").text), "HX-Request": "true"}
    r = client.post("/console/clusters", data={"num_workers": "9", "duration_s": "1800"}, headers=headers)
    assert r.status_code == 409 and "not enough capacity" in r.text
    r = client.post("/console/clusters", data={"num_workers": "0", "duration_s": "1800"}, headers=headers)
    assert r.status_code == 422 and "num_workers" in r.text
    r = client.get("/console/clusters/c-0000000000ff/status", headers={"HX-Request": "true"})
    assert r.status_code == 404 and "not found" in r.text


def test_delete_then_status_is_terminating(client):
    sign_in(client)
    token = csrf_of(client.get("/").text)
    r = client.post("/console/clusters/c-0123456789ab/delete", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and 'data-status="terminating"' in r.text


def test_provider_and_admin_views(client, fakes):
    sign_in(client, "pat")
    page = client.get("/").text
    assert "Your machines" in page and "Machine keys" in page
    machines = client.get("/console/machines").text
    assert "box-1" in machines and "online" in machines
    assert 'data-gpu-verification="mismatch"' in machines and "seen &#39;NVIDIA L4&#39;" in machines
    assert "Earnings per hour" in client.get("/console/usage").text
    assert client.get("/console/accounts").status_code == 403
    client.cookies.clear()
    sign_in(client, "admin")
    assert "Every cluster" in client.get("/").text
    accounts = client.get("/console/accounts").text
    assert all(name in accounts for name in ("alice", "pat", "admin"))
    # A buyer's quota: what it uses, its limits, editable; only buyers have one.
    assert accounts.count("quota-form") == 1 and 'name="max_gpus" size="5" inputmode="decimal" value="4"' in accounts
    token = csrf_of(client.get("/").text)
    r = client.post(
        "/console/accounts/1/quota",
        data={"max_clusters": "2", "max_gpus": "", "max_cpus": "", "max_gpu_hours": "10.5"},
        headers={"X-CSRF-Token": token},
    )
    assert r.status_code == 200 and 'value="2"' in r.text and 'value="10.5"' in r.text
    _, clusters = fakes
    assert clusters.overrides[1] == {"max_clusters": 2, "max_gpus": None, "max_cpus": None, "max_gpu_hours": 10.5}
    bad = client.post("/console/accounts/1/quota", data={"max_clusters": "-1"}, headers={"X-CSRF-Token": token})
    assert bad.status_code == 422 and "max_clusters" in bad.text
    assert client.post("/console/accounts/1/quota", data={"max_clusters": "2"}).status_code == 403  # no CSRF token
    assert "pat" in client.get("/console/machines").text  # the provider column


def test_sign_out_clears_the_cookie(client):
    sign_in(client)
    token = csrf_of(client.get("/").text)
    r = client.post("/logout", headers={"X-CSRF-Token": token})
    assert r.status_code == 204 and r.headers["HX-Redirect"] == "/login"
    assert sess.COOKIE_NAME not in client.cookies


def test_static_assets_come_from_the_package(client):
    r = client.get("/console/static/htmx.min.js")
    assert r.status_code == 200 and r.text.startswith("var htmx=") and "javascript" in r.headers["content-type"]
    assert client.get("/console/static/console.css").status_code == 200
    assert client.get("/console/static/../app.py").status_code == 404


def test_buckets_are_aligned_and_end_now():
    now = 1_000_000_000.5
    b = charts.buckets("24h", now)
    assert len(b) == 24 and b[-1].end == now and b[0].start % 3600 == 0
    assert all(x.end == y.start for x, y in itertools.pairwise(b))
    assert len(charts.buckets("30d", now)) == 30


def test_bar_chart_scales_to_a_round_top_and_escapes_labels():
    svg = charts.bar_chart(["<a>", "b"], [0.3, 0.75], title="Spend & more")
    assert svg.startswith("<svg") and "&lt;a&gt;" in svg and "Spend &amp; more" in svg
    assert "$1.00" in svg  # 0.75 → axis top 1
    assert svg.count("<rect") == 2
    assert charts.bar_chart([], [], title="empty").count("<rect") == 0
