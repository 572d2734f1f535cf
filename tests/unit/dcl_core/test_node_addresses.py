"""What a provider may report as its node's address and ports: the checks, and the agent's LeaseOpened answer."""

import pydantic
import pytest

from dcl_core import node_addresses, protocol


@pytest.mark.parametrize("value", ["10.0.0.1", "198.51.100.7", "127.0.0.1", "::1", "2001:db8::5", "fd00::1"])
def test_literal_unicast_ips_are_taken_in_normal_form(value):
    assert node_addresses.unicast_ip(value) == value
    assert node_addresses.unicast_ip("2001:DB8:0::5") == "2001:db8::5"


@pytest.mark.parametrize(
    "value, match",
    [
        ("head.example.com", "not a literal IP address"),
        ("localhost", "not a literal IP address"),
        ("10.0.0.1:8265", "not a literal IP address"),
        ("http://10.0.0.1", "not a literal IP address"),
        ("10.0.0.1/x", "not a literal IP address"),
        ("", "not a literal IP address"),
        ("0.0.0.0", "not a unicast address"),
        ("::", "not a unicast address"),
        ("224.0.0.1", "not a unicast address"),
        ("ff02::1", "not a unicast address"),
        ("255.255.255.255", "not a unicast address"),
        ("fe80::1%eth0", "carries a zone"),
        (167772161, "not a string"),  # 10.0.0.1 as an int: ipaddress would take it, a report may not
        (None, "not a string"),
    ],
)
def test_host_names_and_addresses_that_name_no_single_machine_are_refused(value, match):
    with pytest.raises(ValueError, match=match):
        node_addresses.unicast_ip(value)


@pytest.mark.parametrize("value", [0, -1, 65536, True, "8265", 8265.0, None])
def test_ports_are_integers_in_1_to_65535(value):
    with pytest.raises(ValueError, match="not an integer in 1-65535"):
        node_addresses.port(value)
    assert node_addresses.port(1) == 1 and node_addresses.port(65535) == 65535


@pytest.mark.parametrize(
    "data",
    [
        {"ports": {"dashboard": 8265}, "node_ip": "evil.example.com"},
        {"ports": {"dashboard": 8265}, "node_ip": "224.0.0.1"},
        {"ports": {"dashboard": 0}, "node_ip": "10.0.0.1"},
        {"ports": {"dashboard": 70000}, "node_ip": "10.0.0.1"},
    ],
)
def test_an_agents_lease_opened_answer_with_a_bad_address_or_port_is_refused(data):
    with pytest.raises(pydantic.ValidationError):
        protocol.LeaseOpened.model_validate(data)
    good = protocol.LeaseOpened.model_validate({"ports": {"dashboard": 8265}, "node_ip": "10.0.0.1"})
    assert good.node_ip == "10.0.0.1" and good.ports == {"dashboard": 8265}
