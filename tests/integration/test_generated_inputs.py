"""Generated requests over the OpenAPI schema, against the real platform over HTTP (schemathesis).

Every operation, as every kind of caller (anonymous, buyer, provider, admin, and a cluster's
node-provider credential), with schema-valid and schema-violating inputs: no answer is a server
error, every status code is one the schema documents, and what was stored before is intact after.
Derandomized: the same cases every run.
"""

from __future__ import annotations

import collections
import time
import uuid

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from actors.access import auth
from dcl_core import domain
from tests.integration.helpers import Api

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 5  # per caller and per mode (valid, invalid): 2 x 5 x 5 callers x ~31 operations
TIME_BUDGET_S = 420  # ~100 s on an idle 2-core machine; 214 s seen with four other suites running
CHECKS = [not_a_server_error, status_code_conformance]
MACHINE = {
    "machine_key": "mk-witness-0001",
    "name": "witness-box",
    "price_per_gpu_hour": 1.5,
    "price_per_cpu_hour": 0.02,
    "spec": {"hostname": "witness", "cpus": 4, "memory_mb": 4096},
}
STABLE_MACHINE_FIELDS = (
    "id",
    "provider_id",
    "provider",
    "name",
    "spec",
    "price_per_gpu_hour",
    "price_per_cpu_hour",
    "registered_at",
)


def _node_provider_token(platform) -> tuple[str, str]:
    """A credential scoped to one cluster, as the manager issues them (signed with the platform's secret)."""
    cluster_id = "c-" + uuid.uuid4().hex[:12]
    secret = auth.load_or_create_jwt_secret(platform.state_dir, environ={})
    principal = auth.Principal(0, "node-provider", domain.Role.BUYER, cluster_id)
    return auth.TokenIssuer(secret).issue(principal), cluster_id


def _witness(platform) -> dict:
    """Accounts and a machine made before the run, read back after it."""
    provider = Api.sign_up(platform.url, "provider")
    buyer = Api.sign_up(platform.url, "buyer")
    machine_id = _machine_that_left(provider, MACHINE)
    return {
        "provider": provider,
        "buyer": buyer,
        "machine_id": machine_id,
        "snapshot": _snapshot(platform, provider, buyer, machine_id),
    }


def _machine_that_left(provider: Api, request: dict) -> str:
    """A registered machine, gone at once: no generated cluster may be placed on it (no agent runs it)."""
    r = provider.post("/v1/machines", json=request)
    assert r.status_code == 201, r.text
    assert provider.delete(f"/v1/machines/{r.json()['id']}").status_code == 200
    return r.json()["id"]


def _snapshot(platform, provider: Api, buyer: Api, machine_id: str) -> dict:
    machine = provider.get(f"/v1/machines/{machine_id}").json()
    return {
        "provider": provider.get("/v1/accounts/me").json(),
        "buyer": buyer.get("/v1/accounts/me").json(),
        "machine": {k: machine[k] for k in STABLE_MACHINE_FIELDS},
        "admin_sees": {
            k: v
            for k, v in platform.admin().get(f"/v1/machines/{machine_id}").json().items()
            if k in STABLE_MACHINE_FIELDS
        },
        "buyer_clusters": buyer.get("/v1/clusters").json(),
    }


@pytest.mark.timeout(900)  # the platform's start may fall in this test when it runs first
def test_generated_requests_get_no_server_error_and_only_documented_statuses(platform):
    witness = _witness(platform)
    node_token, node_cluster = _node_provider_token(platform)
    provider = Api.sign_up(platform.url, "provider")  # the cases may do anything with its machine
    machine_id = _machine_that_left(provider, {**MACHINE, "machine_key": "mk-fuzzed-0001", "name": "fuzzed-box"})
    callers = {
        "anonymous": None,
        "buyer": Api.sign_up(platform.url, "buyer").http.headers["Authorization"],
        "provider": provider.http.headers["Authorization"],
        "admin": platform.admin().http.headers["Authorization"],
        "node-provider": f"Bearer {node_token}",
    }
    # Path ids the valid cases use: the caller's own machine or cluster (the rest are random).
    own = {"provider": {"machine_id": machine_id}, "node-provider": {"cluster_id": node_cluster}}
    spec = Api(platform.url).get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30, [op.label for op in operations]

    counts: collections.Counter = collections.Counter()
    failures: list[str] = []
    deadline = time.monotonic() + TIME_BUDGET_S
    started = time.monotonic()
    for operation in operations:
        for caller, authorization in callers.items():
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                if time.monotonic() > deadline:
                    pytest.fail(f"over the {TIME_BUDGET_S} s budget after {sum(counts.values())} cases")
                _run(platform.url, operation, caller, authorization, mode, own.get(caller, {}), counts, failures)
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    print(f"\n{total} generated requests in {elapsed:.0f} s; statuses: {dict(sorted(counts.items()))}")
    assert not failures, f"{len(failures)} of {total} cases failed:\n" + "\n\n".join(failures[:20])
    assert total >= 1000

    after = _snapshot(platform, witness["provider"], witness["buyer"], witness["machine_id"])
    assert after == witness["snapshot"]
    for api in (witness["provider"], witness["buyer"]):
        r = Api(platform.url).post("/v1/token", data={"username": api.username, "password": api.password})
        assert r.status_code == 200, r.text


def _run(base_url, operation, caller, authorization, mode, own_ids, counts, failures) -> None:
    kwargs = {}
    if operation.path == "/v1/machines/{machine_id}/work":
        kwargs["query"] = {"wait_s": 0}  # the long poll would hold each case for up to 30 s
    own = {name: value for name, value in own_ids.items() if "{" + name + "}" in operation.path}
    if own and mode.is_positive:
        kwargs["path_parameters"] = own
    strategy = operation.as_strategy(generation_mode=mode, **kwargs)
    headers = {"Authorization": authorization} if authorization else {}

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def one(case):
        if authorization:
            case.headers = {**(case.headers or {}), **headers}
        try:
            response = case.call(base_url=base_url, timeout=60)
        except Exception as exc:  # a connection reset is as bad as a 500
            failures.append(f"{caller} {mode.value} {operation.label}: {type(exc).__name__}: {exc}")
            return
        counts[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:
            failures.append(
                f"{caller} {mode.value} {operation.label} -> {response.status_code} "
                f"{response.text[:300]}\n{_first_lines(exc)}\n{case.as_curl_command()}"
            )

    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing of this operation can be made invalid (no parameters, no body)


def _first_lines(exc: Exception, n: int = 6) -> str:
    return "\n".join(str(exc).splitlines()[:n])
