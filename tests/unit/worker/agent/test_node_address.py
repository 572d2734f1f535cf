"""The address a machine's leases advertise: --node-ip when given (an IP address, else a clear error), else the
source address of the route towards the platform, never a loopback one (the platform could not reach it)."""

from __future__ import annotations

import pydantic
import pytest

from worker.agent import node_address
from worker.agent import state as state_mod


def test_an_explicit_address_wins_and_must_be_an_ip_address():
    assert node_address.choose("10.1.2.3", "https://198.51.100.7:8443") == "10.1.2.3"
    assert state_mod.AgentSettings(platform_url="https://p", username="u", node_ip=" 10.1.2.3 ").node_ip == "10.1.2.3"
    with pytest.raises(pydantic.ValidationError, match="'provider.example' is not an IP address"):
        state_mod.AgentSettings(platform_url="https://p", username="u", node_ip="provider.example")


@pytest.mark.parametrize("url", ["https://127.0.0.1:8443", "http://localhost:8000", "https://[::1]:8443"])
def test_a_platform_on_this_machine_leaves_the_choice_to_ray(url):
    assert node_address.facing(url) is None


def test_a_name_that_does_not_resolve_leaves_the_choice_to_ray():
    assert node_address.facing("https://platform.invalid:8443") is None
