"""actors.backends.catalog: one backend for each ClusterSpec.backend name, each behind the one interface."""

from __future__ import annotations

import typing

import pytest

from actors.backends import backend, catalog
from actors.backends.aws import ec2 as aws_ec2
from actors.backends.aws import launch as aws_launch
from actors.backends.aws import launcher_config as aws_config
from actors.backends.market import launch as market_launch
from actors.backends.market import launcher_config as market_config
from actors.settings import PlatformSettings
from configs import aws
from dcl_core import cluster_spec
from tests.protocols import assert_implements

CID = "c-00112233aabb"


def test_every_spec_backend_has_one_backend_behind_the_interface(tmp_path):
    made = catalog.backends(PlatformSettings(state_dir=tmp_path, api_url="http://127.0.0.1:9"), tokens=lambda: None)
    assert set(made) == set(typing.get_args(cluster_spec.Backend))
    assert all(b.name == name for name, b in made.items())
    assert_implements(backend.Backend, *map(type, made.values()))


def test_launch_steps_implement_the_interface():
    assert_implements(backend.LaunchSteps, *map(type, catalog.LAUNCH_STEPS))


def test_each_launcher_config_gets_the_launch_steps_of_its_own_backend(tmp_path):
    spec = cluster_spec.ClusterSpec(num_workers=1, duration_s=600)
    market = market_config.render_market_config(
        cluster_id=CID, spec=spec, platform_url="http://127.0.0.1:9", provider_token="t"
    )
    token = tmp_path / "token"
    ec2 = aws_config.render_aws_config(
        cluster_id=CID,
        spec=spec.model_copy(update={"backend": "aws"}),
        settings=aws.AwsSettings(allowed_cidr="203.0.113.0/24"),
        ray_auth_token_path=token,
    )
    assert isinstance(catalog.launch_steps(market), market_launch.MarketLaunchSteps)
    assert isinstance(catalog.launch_steps(ec2), aws_launch.AwsLaunchSteps)
    with pytest.raises(ValueError, match="no backend"):
        catalog.launch_steps({"provider": {"type": "gcp"}})


def test_aws_release_waits_until_ec2_lets_the_security_group_go(monkeypatch):
    answers, slept = [False, False, True], []
    monkeypatch.setattr(aws_ec2, "delete_cluster_resources", lambda config: answers.pop(0))
    monkeypatch.setattr(aws_launch.time, "sleep", slept.append)
    aws_launch.AwsLaunchSteps().release({"provider": {"type": "aws"}})
    assert answers == [] and slept == [aws_launch.RELEASE_INTERVAL_S] * 2
