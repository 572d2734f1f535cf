"""The bottom layer: ids, the online rule, roles, command meanings and redaction, the Ray port layout, the exec
models."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pydantic
import pytest

from dcl_core import api, commands, domain, ids, protocol, ray_ports


def test_minted_ids_match_their_patterns():
    for mint, pattern in [
        (ids.new_cluster_id, ids.CLUSTER_ID_PATTERN),
        (ids.new_lease_id, ids.LEASE_ID_PATTERN),
        (ids.new_machine_id, ids.MACHINE_ID_PATTERN),
        (ids.new_work_item_id, ids.WORK_ITEM_ID_PATTERN),
        (ids.new_machine_key, ids.MACHINE_KEY_PATTERN),
    ]:
        a, b = mint(), mint()
        assert re.match(pattern, a) and a != b
    assert re.fullmatch(r"[0-9a-f]{64}", ids.new_ray_auth_token())
    assert not re.match(ids.CLUSTER_ID_PATTERN, ids.new_lease_id())


def test_the_online_rule():
    MS = domain.MachineStatus
    assert MS.effective("online", 100.0, cutoff=100.0) is MS.ONLINE
    assert MS.effective("online", 99.9, cutoff=100.0) is MS.OFFLINE  # silent: offline at once
    assert MS.effective("online", None, cutoff=100.0) is MS.OFFLINE
    assert MS.effective("gone", 200.0, cutoff=100.0) is MS.GONE
    assert [s.is_leasable() for s in MS] == [True, False, False]


def test_statuses_and_roles_own_their_groupings():
    assert {s for s in domain.ClusterStatus if s.is_terminal()} == {
        domain.ClusterStatus.TERMINATED,
        domain.ClusterStatus.FAILED,
        domain.ClusterStatus.EXPIRED,
    }
    assert set(domain.ClusterStatus.active()) | {s for s in domain.ClusterStatus if s.is_terminal()} | {
        domain.ClusterStatus.TERMINATING
    } == set(domain.ClusterStatus)
    assert [s for s in domain.LeaseStatus if s.holds_capacity()] == [
        domain.LeaseStatus.RESERVED,
        domain.LeaseStatus.OPEN,
    ]
    assert [r for r in domain.Role if r.may_hold_clusters()] == [domain.Role.BUYER, domain.Role.ADMIN]
    assert domain.NodeRole.HEAD == "head" and domain.NodeRole("worker") is domain.NodeRole.WORKER


def test_ray_start_and_stop_are_recognised():
    assert commands.starts_ray("export X=1; ray start --head --port 1") and not commands.starts_ray("ray stop")
    assert commands.stops_ray("ray  stop --force")
    assert not commands.stops_ray("echo array stop") and not commands.stops_ray("")


@pytest.mark.parametrize(
    "text",
    [
        "RAY_AUTH_TOKEN=abc ray start",
        "RAY_AUTH_TOKEN='a b c' ray start",
        'RAY_AUTH_TOKEN="a b c" ray start',
        "RAY_AUTH_TOKEN_PATH=/x/abc ray start",
    ],
)
def test_redaction_hides_every_form_of_the_token(text):
    shown = commands.redact(text)
    assert "abc" not in shown and "a b c" not in shown and shown.endswith("*** ray start")


def test_port_layout_flags_and_round_trip():
    names = ray_ports.RayPorts.single_port_names()
    ports = ray_ports.RayPorts.from_ports(list(range(30000, 30000 + len(names))), 40000, worker_range=10)
    assert ports.max_worker == 40009 and len(ports.listening()) == len(names)
    assert len(ports.all_ports()) == len(names) + 10
    assert ray_ports.RayPorts.from_dict(ports.to_dict()) == ports
    head = ports.start_flags(head=True, temp_dir=Path("/t"))
    worker = ports.start_flags(head=False, temp_dir=Path("/t"))
    assert head[:2] == ["--temp-dir", "/t"] and "--port" in head and "--port" not in worker
    assert "--dashboard-port" in head and "--min-worker-port" in worker
    assert ports.env() == {
        "AUTOSCALER_METRIC_PORT": str(ports.autoscaler_metric),
        "DASHBOARD_METRIC_PORT": str(ports.dashboard_metric),
    }
    with pytest.raises(ValueError):
        ray_ports.RayPorts.from_ports([1, 2], 40000)


def test_one_exec_model_for_the_node_route_and_the_agent():
    assert issubclass(api.NodeExec, protocol.Exec) and issubclass(protocol.LeaseExec, protocol.Exec)
    assert set(api.NodeExec.model_fields) == set(protocol.Exec.model_fields)
    body = api.NodeExec(op="run", cmd="uptime")
    item = protocol.LeaseExec(lease_id=ids.new_lease_id(), **body.model_dump())
    assert item.cmd == "uptime" and item.timeout_s == 120.0
    with pytest.raises(pydantic.ValidationError):
        protocol.LeaseExec(lease_id="c-0123456789ab", op="run")
    with pytest.raises(pydantic.ValidationError):
        api.NodeExec(op="run", unknown=1)  # strict: unknown fields are errors


def test_the_node_role_literal_names_every_role_and_nothing_else():
    assert set(typing.get_args(domain.NodeRoleValue)) == {role.value for role in domain.NodeRole}


def test_the_event_of_each_status_a_cluster_reaches_or_ends_in_is_an_event_kind():
    for status in domain.ClusterStatus:
        if status.is_terminal() or status in (domain.ClusterStatus.RUNNING, domain.ClusterStatus.DEGRADED):
            assert domain.EventKind.reached(status).value == status.value
    assert domain.EventKind.joined("head") is domain.EventKind.HEAD_JOINED
    assert domain.EventKind.joined("worker") is domain.EventKind.WORKER_JOINED
