"""The aws launcher config: Ray's validator accepts it, and under moto Ray's own AWS bootstrap leaves a
security group open only inside the cluster and, on 22/8265/10001, to allowed_cidr. Never real AWS."""

from __future__ import annotations

import copy
import ipaddress
import os
import secrets
import socket
import stat
import types

import boto3
import pytest
import ray
import yaml
from moto import mock_aws
from ray._private import label_utils
from ray.autoscaler._private import commands
from ray.autoscaler._private.aws import config as ray_aws_config
from ray.autoscaler._private.aws import node_provider as ray_aws_node_provider
from ray.autoscaler._private.aws import utils as ray_aws_utils
from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
from ray.autoscaler._private.providers import _get_default_config
from ray.autoscaler._private.util import fillout_defaults, prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

from actors.backends import catalog
from actors.backends.aws import backend as aws_backend
from actors.backends.aws import ec2 as aws_ec2
from actors.backends.aws import launcher_config, rules
from actors.settings import PlatformSettings
from configs import aws, labels
from dcl_core import cluster_spec, errors
from tests import typed_rows

CID = "c-00112233aabb"
CIDR = "203.0.113.0/24"
REGION = "us-west-2"
WORLD = {"0.0.0.0/0", "::/0"}
OPEN_PORTS = {22, 8265, 10001}

SPECS = [
    cluster_spec.ClusterSpec(num_workers=1, duration_s=600, backend="aws"),
    cluster_spec.ClusterSpec(
        num_workers=2, gpus_per_worker=1, gpu_model="Tesla T4", cpus_per_worker=4, duration_s=3600, backend="aws"
    ),
    cluster_spec.ClusterSpec(num_workers=64, gpus_per_worker=1, duration_s=7 * 24 * 3600, backend="aws"),
]
PROFILE_ARN = "arn:aws:iam::123456789012:instance-profile/dcluster-head"
SEED_RULE = {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "ray_auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


@pytest.fixture
def settings():
    return aws.AwsSettings(allowed_cidr=CIDR)


def render(spec: cluster_spec.ClusterSpec, settings: aws.AwsSettings, token_file) -> dict:
    return launcher_config.render_aws_config(
        cluster_id=CID, spec=spec, settings=settings, ray_auth_token_path=str(token_file)
    )


def start_commands(config: dict) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


# --- rendering ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.num_workers}x{s.gpus_per_worker}gpu")
def test_rendered_config_passes_rays_validator_and_loaders(spec, settings, token_file):
    config = render(spec, settings, token_file)
    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))  # what the launcher's _bootstrap_config does first
    validate_config(prepared)
    # Ray's AWS defaults.yaml fills only what we leave out; never its setup commands (a nightly wheel).
    assert set(_get_default_config(config["provider"])) - set(config) == {"docker"}
    assert prepared["setup_commands"] == config["setup_commands"]
    assert prepared["provider"] == config["provider"]
    fillout_defaults(copy.deepcopy(config))
    head_view = AutoscalingConfig(copy.deepcopy(config))  # what the head's v2 autoscaler loads
    assert head_view.get_head_node_type() == "head"
    assert head_view.get_max_num_worker_nodes() == spec.num_workers
    assert head_view.get_node_labels("worker")[labels.CLUSTER_LABEL] == CID


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.num_workers}x{s.gpus_per_worker}gpu")
def test_seed_shape_head_t3_workers_g4dn_fixed_at_num_workers(spec, settings, token_file):
    config = render(spec, settings, token_file)
    head, worker = config["available_node_types"]["head"], config["available_node_types"]["worker"]
    assert head["node_config"] == {"InstanceType": "t3.xlarge"}
    assert worker["node_config"] == {"InstanceType": "g4dn.xlarge"}
    assert config["max_workers"] == worker["min_workers"] == worker["max_workers"] == spec.num_workers
    assert head["resources"] == {"CPU": 0, "GPU": 0} and head["min_workers"] == head["max_workers"] == 0
    assert worker["resources"] == {"CPU": spec.cpus_per_worker, "GPU": spec.gpus_per_worker}
    assert worker["labels"][labels.CLUSTER_LABEL] == CID == head["labels"][labels.CLUSTER_LABEL]
    label_utils.validate_node_label_syntax(worker["labels"])
    assert config["cluster_name"] == CID and config["head_node_type"] == "head"
    assert config["provider"]["type"] == "aws" and config["provider"]["region"] == REGION
    assert config["provider"]["cache_stopped_nodes"] is False
    assert config["provider"]["security_group"]["GroupName"] == f"dcluster-{CID}"
    assert config["provider"]["key_pair"] == {"key_name": f"dcluster-{CID}"}  # a key pair of its own
    assert config["auth"] == {"ssh_user": "ubuntu"}


def test_gpu_label_only_when_gpus_are_asked_for(settings, token_file):
    assert labels.GPU_LABEL not in render(SPECS[0], settings, token_file)["available_node_types"]["worker"]["labels"]
    worker_labels = render(SPECS[1], settings, token_file)["available_node_types"]["worker"]["labels"]
    assert worker_labels[labels.GPU_LABEL] == "Tesla-T4"


def test_no_password_no_token_value_and_token_auth_on_every_node(settings, token_file):
    config = render(SPECS[1], settings, token_file)
    text = yaml.safe_dump(config)
    assert token_file.read_text() not in text
    text = text.replace(str(token_file), "<token path>")  # pytest's tmp path holds the test's name
    assert "password" not in text.lower() and "redis" not in text.lower()
    assert config["file_mounts"] == {"~/ray_auth_token": str(token_file)}
    for cmd in start_commands(config):
        assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/ray_auth_token;" in cmd
        assert cmd.index("RAY_AUTH_MODE=token") < cmd.index("ray start")
    (head_cmd,) = config["head_start_ray_commands"]
    assert "--dashboard-port=8265" in head_cmd and "--ray-client-server-port=10001" in head_cmd
    assert "--port=6379" in head_cmd and "--num-cpus=0" in head_cmd
    assert any(f'"ray[default]=={ray.__version__}"' in c for c in config["setup_commands"])


def test_operator_settings_are_rendered(token_file, tmp_path):
    settings = aws.AwsSettings(
        allowed_cidr="2001:db8::/48",
        region="eu-west-1",
        head_instance_type="m5.large",
        worker_instance_type="g5.12xlarge",
        image_id="ami-0123456789abcdef0",
        ssh_user="ec2-user",
        ssh_private_key=tmp_path / "ops.pem",
        key_name="ops",
        name_prefix="acme",
        head_instance_profile_arn="arn:aws:iam::123456789012:instance-profile/dcluster-head",
    )
    spec = cluster_spec.ClusterSpec(
        num_workers=3, gpus_per_worker=4, cpus_per_worker=48, gpu_model="NVIDIA A10G", duration_s=600, backend="aws"
    )
    config = render(spec, settings, token_file)
    validate_config(config)
    head, worker = (config["available_node_types"][t]["node_config"] for t in ("head", "worker"))
    assert head == {
        "InstanceType": "m5.large",
        "KeyName": "ops",
        "ImageId": "ami-0123456789abcdef0",
        "IamInstanceProfile": {"Arn": settings.head_instance_profile_arn},
    }
    assert worker == {"InstanceType": "g5.12xlarge", "KeyName": "ops", "ImageId": "ami-0123456789abcdef0"}
    assert config["auth"] == {"ssh_user": "ec2-user", "ssh_private_key": str(tmp_path / "ops.pem")}
    assert "key_pair" not in config["provider"]
    assert config["provider"]["security_group"]["GroupName"] == f"acme-{CID}"
    for perm in config["provider"]["security_group"]["IpPermissions"]:
        assert [r["CidrIpv6"] for r in perm["Ipv6Ranges"]] == ["2001:db8::/48"] and "IpRanges" not in perm


def test_rendered_rules_open_only_the_three_ports_to_allowed_cidr(settings, token_file):
    perms = render(SPECS[0], settings, token_file)["provider"]["security_group"]["IpPermissions"]
    assert {(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in perms} == {("tcp", n, n) for n in OPEN_PORTS}
    assert all([r["CidrIp"] for r in p["IpRanges"]] == [CIDR] for p in perms)
    assert rules.security_group_findings(perms) == []


def test_render_refuses_what_it_cannot_render(settings, token_file):
    with pytest.raises(ValueError, match="not a cluster id"):
        launcher_config.render_aws_config(
            cluster_id="my-cluster", spec=SPECS[0], settings=settings, ray_auth_token_path=str(token_file)
        )
    with pytest.raises(ValueError, match="absolute path"):
        launcher_config.render_aws_config(
            cluster_id=CID, spec=SPECS[0], settings=settings, ray_auth_token_path="abc123"
        )
    with pytest.raises(ValueError, match="backend 'aws' only"):
        render(cluster_spec.ClusterSpec(num_workers=1, duration_s=600), settings, token_file)


@pytest.mark.parametrize(
    "spec_kwargs, match",
    [
        ({"gpus_per_worker": 2}, "at most that"),
        ({"cpus_per_worker": 8}, "at most that"),
        ({"gpus_per_worker": 1, "gpu_model": "NVIDIA H100 80GB HBM3"}, "Tesla T4"),
    ],
)
def test_specs_the_worker_instance_cannot_hold_are_refused(spec_kwargs, match, settings):
    spec = cluster_spec.ClusterSpec(num_workers=1, duration_s=600, backend="aws", **spec_kwargs)
    with pytest.raises(errors.InvalidInput, match=match):
        launcher_config.check_spec(spec, settings)


def test_unknown_instance_types_are_trusted_for_counts_but_promise_no_gpu_model():
    settings = aws.AwsSettings(allowed_cidr=CIDR, worker_instance_type="x9z.mega")
    launcher_config.check_spec(
        cluster_spec.ClusterSpec(num_workers=1, gpus_per_worker=8, duration_s=600, backend="aws"), settings
    )
    with pytest.raises(errors.InvalidInput, match="gpu_model"):
        launcher_config.check_spec(
            cluster_spec.ClusterSpec(
                num_workers=1, gpus_per_worker=1, gpu_model="Tesla T4", duration_s=600, backend="aws"
            ),
            settings,
        )


# --- security_group_findings ----------------------------------------------------------------------------


def test_findings_report_the_seeds_security_group():
    findings = rules.security_group_findings([SEED_RULE])
    assert any("whole internet" in f and "0.0.0.0/0" in f for f in findings)
    assert any("every port" in f for f in findings)


@pytest.mark.parametrize(
    "rule, expected",
    [
        (
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            ["tcp 22 is open to the whole internet (0.0.0.0/0)"],
        ),
        (
            {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
            ["tcp 8265 is open to the whole internet (::/0)"],
        ),
        (
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
            ["all traffic (every port) is open to 10.0.0.0/8"],
        ),
        (
            {"IpProtocol": "udp", "FromPort": 1, "ToPort": 65535, "IpRanges": [{"CidrIp": CIDR}]},
            [f"udp 1-65535 (every port) is open to {CIDR}"],
        ),
        ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": CIDR}]}, []),
        ({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-0000000000000000a"}]}, []),
    ],
)
def test_findings(rule, expected):
    assert rules.security_group_findings([rule]) == expected


def test_findings_flag_other_groups_when_the_clusters_own_is_known():
    rule = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-0000000000000000b"}]}
    assert rules.security_group_findings([rule], group_id="sg-0000000000000000a") == [
        "all traffic is open to another security group (sg-0000000000000000b)"
    ]


# --- under moto: Ray's own AWS bootstrap ---------------------------------------------------------------


def _clear_ray_aws_caches():
    # Ray caches boto3 clients/resources and subnet lookups process-wide; moto's state is per test.
    ray_aws_utils.resource_cache.cache_clear()
    ray_aws_utils.client_cache.cache_clear()
    ray_aws_config._get_subnets_or_die.cache_clear()


def _moto(monkeypatch, tmp_path, *, iam_managed_policies: bool):
    """Fake credentials, no network at all, moto for every AWS call, HOME (for ~/.ssh keys) in tmp_path."""
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Ray's default IAM bootstrap attaches AWS-managed policies (AmazonEC2FullAccess...), which moto knows
    # only when it loads its copy of them: seconds per mock start, so only for the tests that need it.
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true" if iam_managed_policies else "false")
    # Nothing here looks AMIs up (Ray's bootstrap only names its default one): skip moto's AMI catalog.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))

    def no_network(*args, **kwargs):
        raise AssertionError("a unit test tried to open a network connection (AWS must be moto here)")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    # Ray's IAM bootstrap sleeps 15 s twice "for propagation"; moto needs none. Only that module's view of
    # `time` is replaced (it uses nothing else from it).
    monkeypatch.setattr(ray_aws_config, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    # Ray reads EC2's whole instance-type catalog (~1,400 types, seconds in moto) on every bootstrap;
    # the catalog is static, so it is read through moto once per session.
    monkeypatch.setattr(ray_aws_node_provider, "list_ec2_instances", _instance_catalog)
    _clear_ray_aws_caches()
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)
    _clear_ray_aws_caches()


@pytest.fixture
def moto_aws(monkeypatch, tmp_path):
    """moto, for tests whose head uses an operator's instance profile (Ray creates no IAM role)."""
    yield from _moto(monkeypatch, tmp_path, iam_managed_policies=False)


@pytest.fixture
def moto_aws_iam(monkeypatch, tmp_path):
    """moto, for tests of Ray's default path: it creates the ray-autoscaler-v1 role and instance profile."""
    yield from _moto(monkeypatch, tmp_path, iam_managed_policies=True)


@pytest.fixture
def scoped_settings():
    return aws.AwsSettings(allowed_cidr=CIDR, head_instance_profile_arn=PROFILE_ARN)


_catalog: list[dict] = []


def _instance_catalog(region, aws_credentials=None):
    if not _catalog:
        _catalog.extend(_real_list_ec2_instances(region, aws_credentials))
    return copy.deepcopy(_catalog)


_real_list_ec2_instances = ray_aws_node_provider.list_ec2_instances


def launcher_bootstrap(config: dict) -> dict:
    """What create_or_update_cluster (and teardown_cluster) do before touching a node: prepare_config,
    fill the node types' resources from DescribeInstanceTypes, validate, then the provider's
    bootstrap_config, i.e. bootstrap_aws."""
    return commands._bootstrap_config(copy.deepcopy(config), no_config_cache=True)


def group_rules(ec2, name: str) -> tuple[str, list[dict]]:
    (group,) = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    return group["GroupId"], group["IpPermissions"]


def assert_locked_down(ec2, group_id: str, perms: list[dict], cidr: str = CIDR) -> None:
    inside = [p for p in perms if p.get("UserIdGroupPairs")]
    outside = [p for p in perms if not p.get("UserIdGroupPairs")]
    assert len(inside) == 1 and inside[0]["IpProtocol"] == "-1"
    assert [g["GroupId"] for g in inside[0]["UserIdGroupPairs"]] == [group_id]  # the group itself, no other
    assert not inside[0].get("IpRanges") and not inside[0].get("Ipv6Ranges")
    assert {(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in outside} == {("tcp", n, n) for n in OPEN_PORTS}
    for p in outside:
        sources = [r["CidrIp"] for r in p.get("IpRanges", [])] + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
        assert sources == [cidr]
    assert rules.security_group_findings(perms, group_id=group_id) == []
    every_source = {
        r["CidrIp"]
        for g in ec2.describe_security_groups()["SecurityGroups"]
        for p in g["IpPermissions"]
        for r in p.get("IpRanges", [])
    }
    assert not every_source & WORLD


def test_instance_shapes_match_ec2s_catalog(moto_aws):
    types_ = moto_aws.describe_instance_types(InstanceTypes=list(launcher_config.INSTANCE_SHAPES))["InstanceTypes"]
    catalog = {t["InstanceType"]: t for t in types_}
    assert set(catalog) == set(launcher_config.INSTANCE_SHAPES)
    for name, shape in launcher_config.INSTANCE_SHAPES.items():
        info = catalog[name]
        gpus = info.get("GpuInfo", {}).get("Gpus", [])
        assert (info["VCpuInfo"]["DefaultVCpus"], sum(g["Count"] for g in gpus)) == (shape.cpus, shape.gpus), name
        if gpus:
            assert gpus[0]["Name"] in shape.gpu_model, name


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: f"{s.num_workers}x{s.gpus_per_worker}gpu")
def test_launcher_bootstrap_under_moto_leaves_only_our_rules(moto_aws_iam, spec, settings, token_file):
    ec2 = moto_aws_iam
    config = aws_ec2.ensure_security_group(render(spec, settings, token_file))
    resolved = launcher_bootstrap(config)  # (Ray validates before bootstrapping, not after: it adds head_node)

    group_id, perms = group_rules(ec2, f"dcluster-{CID}")
    assert_locked_down(ec2, group_id, perms)
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    (default_vpc,) = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    assert group["VpcId"] == default_vpc["VpcId"]
    assert {"Key": labels.CLUSTER_LABEL, "Value": CID} in group["Tags"]

    subnets = {s["SubnetId"]: s for s in ec2.describe_subnets()["Subnets"]}
    for node_type in resolved["available_node_types"].values():
        node_config = node_type["node_config"]
        assert node_config["SecurityGroupIds"] == [group_id]
        assert node_config["SubnetIds"] and all(subnets[s]["VpcId"] == group["VpcId"] for s in node_config["SubnetIds"])
        assert node_config["KeyName"] == f"dcluster-{CID}"
        assert node_config["ImageId"] == ray_aws_config.DEFAULT_AMI[REGION]
    worker = resolved["available_node_types"]["worker"]["resources"]
    assert (worker["CPU"], worker["GPU"]) == (spec.cpus_per_worker, spec.gpus_per_worker)  # ours beat detection
    assert resolved["available_node_types"]["head"]["resources"] == {"CPU": 0, "GPU": 0}

    key_path = resolved["auth"]["ssh_private_key"]
    assert key_path == os.path.expanduser(f"~/.ssh/dcluster-{CID}.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == [f"dcluster-{CID}"]
    assert resolved["head_node"]["IamInstanceProfile"]["Arn"].endswith("instance-profile/ray-autoscaler-v1")

    # teardown_cluster bootstraps the same config again: nothing may change.
    launcher_bootstrap(config)
    assert group_rules(ec2, f"dcluster-{CID}") == (group_id, perms)


def test_rays_bootstrap_alone_opens_ssh_to_the_world_and_ensure_repairs_it(moto_aws, scoped_settings, token_file):
    """Why ensure_security_group exists: given only GroupName and IpPermissions, Ray makes the group and
    adds TCP 22 from 0.0.0.0/0 on its own (_create_default_ssh_inbound_rules; no knob turns it off)."""
    ec2 = moto_aws
    config = render(SPECS[1], scoped_settings, token_file)
    launcher_bootstrap(config)
    group_id, perms = group_rules(ec2, f"dcluster-{CID}")
    assert rules.security_group_findings(perms) == ["tcp 22 is open to the whole internet (0.0.0.0/0)"]

    repaired = aws_ec2.ensure_security_group(config)  # finds the group by name, revokes what it did not ask for
    launcher_bootstrap(repaired)
    assert group_rules(ec2, f"dcluster-{CID}")[0] == group_id
    assert_locked_down(ec2, group_id, group_rules(ec2, f"dcluster-{CID}")[1])


def test_ensure_security_group_follows_a_changed_allowed_cidr_and_is_idempotent(moto_aws, token_file):
    ec2 = moto_aws
    first = aws_ec2.ensure_security_group(render(SPECS[0], aws.AwsSettings(allowed_cidr=CIDR), token_file))
    group_id = first["available_node_types"]["head"]["node_config"]["SecurityGroupIds"][0]
    moved = "198.51.100.0/24"
    again = aws_ec2.ensure_security_group(render(SPECS[0], aws.AwsSettings(allowed_cidr=moved), token_file))
    assert again["available_node_types"]["worker"]["node_config"]["SecurityGroupIds"] == [group_id]
    assert_locked_down(ec2, group_id, group_rules(ec2, f"dcluster-{CID}")[1], cidr=moved)
    aws_ec2.ensure_security_group(again)
    assert_locked_down(ec2, group_id, group_rules(ec2, f"dcluster-{CID}")[1], cidr=moved)


def test_ensure_security_group_refuses_world_open_rules(moto_aws, settings, token_file):
    config = render(SPECS[0], settings, token_file)
    config["provider"]["security_group"]["IpPermissions"].append(SEED_RULE)
    with pytest.raises(ValueError, match="whole internet"):
        aws_ec2.ensure_security_group(config)
    assert not moto_aws.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"dcluster-{CID}"]}])[
        "SecurityGroups"
    ]


def test_ensure_security_group_uses_the_configured_vpc(moto_aws, scoped_settings, token_file):
    ec2 = moto_aws
    vpc_id = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.7.1.0/24", AvailabilityZone="us-west-2a")["Subnet"]
    ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True})
    config = aws_ec2.ensure_security_group(render(SPECS[0], scoped_settings, token_file), vpc_id=vpc_id)
    resolved = launcher_bootstrap(config)
    group_id, perms = group_rules(ec2, f"dcluster-{CID}")
    assert ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["VpcId"] == vpc_id
    assert resolved["available_node_types"]["worker"]["node_config"]["SubnetIds"] == [subnet["SubnetId"]]
    assert_locked_down(ec2, group_id, perms)


def test_the_launch_steps_of_an_aws_cluster_make_its_group_in_its_vpc_and_remove_it_after(
    moto_aws, scoped_settings, tmp_path
):
    """What the launcher runs around Ray's SDK for the AwsBackend's config: the locked-down group in the
    configured VPC before Ray's bootstrap, and nothing of it left after teardown."""
    ec2 = moto_aws
    vpc_id = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    settings = PlatformSettings(
        state_dir=tmp_path, api_url="http://127.0.0.1:9", aws=scoped_settings.model_copy(update={"vpc_id": vpc_id})
    )
    config = aws_backend.AwsBackend(settings).launcher_config(
        typed_rows.cluster(id=CID, spec=SPECS[0].model_dump()), 0.0
    )
    steps = catalog.launch_steps(config)
    prepared = steps.prepare(config)
    group_id, perms = group_rules(ec2, f"dcluster-{CID}")
    assert ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["VpcId"] == vpc_id
    assert_locked_down(ec2, group_id, perms)
    assert prepared["available_node_types"]["worker"]["node_config"]["SecurityGroupIds"] == [group_id]
    steps.release(prepared)
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"dcluster-{CID}"]}])[
        "SecurityGroups"
    ]


def test_operator_key_and_instance_profile_make_ray_create_neither(moto_aws, token_file, tmp_path):
    ec2 = moto_aws
    settings = aws.AwsSettings(
        allowed_cidr=CIDR, ssh_private_key=tmp_path / "ops.pem", key_name="ops", head_instance_profile_arn=PROFILE_ARN
    )
    resolved = launcher_bootstrap(aws_ec2.ensure_security_group(render(SPECS[1], settings, token_file)))
    assert resolved["auth"]["ssh_private_key"] == str(tmp_path / "ops.pem")
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert boto3.client("iam", region_name=REGION).list_instance_profiles()["InstanceProfiles"] == []
    assert resolved["available_node_types"]["head"]["node_config"]["IamInstanceProfile"] == {
        "Arn": settings.head_instance_profile_arn
    }


def test_the_head_node_ray_launches_lands_in_the_group(moto_aws_iam, settings, token_file):
    ec2 = moto_aws_iam
    resolved = launcher_bootstrap(aws_ec2.ensure_security_group(render(SPECS[1], settings, token_file)))
    group_id, _ = group_rules(ec2, f"dcluster-{CID}")
    provider = AWSNodeProvider(resolved["provider"], CID)
    # As get_or_create_head_node does: the head's node_config plus the bootstrap's "head_node" (IAM profile).
    head_config = {**resolved["available_node_types"]["head"]["node_config"], **resolved["head_node"]}
    provider.create_node(head_config, {"ray-node-type": "head", "ray-user-node-type": "head"}, 1)
    (instance,) = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group_id]
    assert instance["InstanceType"] == "t3.xlarge"
    assert instance["IamInstanceProfile"]["Arn"].endswith("instance-profile/ray-autoscaler-v1")


def test_delete_cluster_resources_removes_group_and_key_pair(moto_aws, scoped_settings, token_file):
    ec2 = moto_aws
    config = aws_ec2.ensure_security_group(render(SPECS[0], scoped_settings, token_file))
    launcher_bootstrap(config)
    key_path = os.path.expanduser(f"~/.ssh/dcluster-{CID}.pem")
    assert os.path.exists(key_path)
    assert aws_ec2.delete_cluster_resources(config) is True
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"dcluster-{CID}"]}])[
        "SecurityGroups"
    ]
    assert ec2.describe_key_pairs()["KeyPairs"] == [] and not os.path.exists(key_path)
    assert aws_ec2.delete_cluster_resources(config) is True  # idempotent


def test_ip_permissions_per_address_family():
    v4, v6 = rules.ip_permissions("192.0.2.0/24"), rules.ip_permissions("2001:db8::/64")
    assert all(list(p["IpRanges"][0]) == ["CidrIp", "Description"] for p in v4)
    assert all(ipaddress.ip_network(p["Ipv6Ranges"][0]["CidrIpv6"]).version == 6 for p in v6)


def test_delete_cluster_resources_says_false_while_instances_hold_the_group(
    moto_aws, scoped_settings, token_file, monkeypatch
):
    from botocore.exceptions import ClientError

    config = aws_ec2.ensure_security_group(render(SPECS[0], scoped_settings, token_file))
    real_ec2 = aws_ec2.ec2_client

    def ec2_with_group_in_use(cfg):
        # EC2 refuses to delete a group that instances still use; moto does not model that refusal.
        client = real_ec2(cfg)

        def in_use(**kwargs):
            raise ClientError({"Error": {"Code": "DependencyViolation", "Message": "in use"}}, "DeleteSecurityGroup")

        client.delete_security_group = in_use
        return client

    monkeypatch.setattr(aws_ec2, "ec2_client", ec2_with_group_in_use)
    assert aws_ec2.delete_cluster_resources(config) is False
    monkeypatch.setattr(aws_ec2, "ec2_client", real_ec2)
    assert aws_ec2.delete_cluster_resources(config) is True
