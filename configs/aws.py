"""Render and check the cluster-launcher config of a buyer's sub-cluster on the aws backend (aws.yaml); the EC2
calls that secure and clean up its resources are in actors/aws_ec2.py."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from configs import labels, templates
from dcl_core import cluster_spec, domain, errors, ids

TEMPLATE = "aws.yaml"
TOKEN_REMOTE_PATH = "~/ray_auth_token"
# The ports reachable from AwsSettings.allowed_cidr; everything else only from inside the group.
OPEN_PORTS = {22: "SSH (the launcher, operators)", 8265: "Ray dashboard and jobs API", 10001: "Ray client"}
_CLUSTER_ID_RE = re.compile(ids.CLUSTER_ID_PATTERN)


@dataclasses.dataclass(frozen=True)
class InstanceShape:
    cpus: int
    gpus: int
    gpu_model: str | None  # as NVML (nvidia-smi, worker/agent/detect.py) names it


# vCPUs and GPUs as EC2's DescribeInstanceTypes reports them (tests check this table against moto's copy
# of that catalog). Unknown instance types are trusted for counts, but cannot promise a GPU model.
INSTANCE_SHAPES: dict[str, InstanceShape] = {
    "t3.xlarge": InstanceShape(4, 0, None),
    "g4dn.xlarge": InstanceShape(4, 1, "Tesla T4"),
    "g4dn.2xlarge": InstanceShape(8, 1, "Tesla T4"),
    "g4dn.4xlarge": InstanceShape(16, 1, "Tesla T4"),
    "g4dn.8xlarge": InstanceShape(32, 1, "Tesla T4"),
    "g4dn.12xlarge": InstanceShape(48, 4, "Tesla T4"),
    "g4dn.16xlarge": InstanceShape(64, 1, "Tesla T4"),
    "g4dn.metal": InstanceShape(96, 8, "Tesla T4"),
    "g5.xlarge": InstanceShape(4, 1, "NVIDIA A10G"),
    "g5.2xlarge": InstanceShape(8, 1, "NVIDIA A10G"),
    "g5.12xlarge": InstanceShape(48, 4, "NVIDIA A10G"),
    "g5.48xlarge": InstanceShape(192, 8, "NVIDIA A10G"),
    "g6.xlarge": InstanceShape(4, 1, "NVIDIA L4"),
    "p4d.24xlarge": InstanceShape(96, 8, "NVIDIA A100-SXM4-40GB"),
    "p5.48xlarge": InstanceShape(192, 8, "NVIDIA H100 80GB HBM3"),
}


class AwsSettings(domain.StrictModel):
    """The platform's `aws:` setting; backend "aws" is accepted only when it is present."""

    allowed_cidr: Annotated[
        str,
        Field(
            description="The only network that reaches SSH (22), the dashboard/jobs API (8265) and the Ray "
            "client (10001); must include the launcher's egress address. Never 0.0.0.0/0 or ::/0"
        ),
    ]
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", description="AWS region")] = "us-west-2"
    head_instance_type: Annotated[str, Field(pattern=r"^[a-z0-9-]+\.[a-z0-9-]+$")] = "t3.xlarge"
    worker_instance_type: Annotated[str, Field(pattern=r"^[a-z0-9-]+\.[a-z0-9-]+$")] = "g4dn.xlarge"
    image_id: Annotated[
        str | None,
        Field(
            pattern=r"^ami-[0-9a-f]{8,17}$",
            description="AMI of every node; default: Ray's default AMI for the region (a Deep Learning AMI)",
        ),
    ] = None
    ssh_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "ubuntu"
    ssh_private_key: Annotated[
        Path | None, Field(description="The operator's own key pair (with key_name); default: a key pair per cluster")
    ] = None
    key_name: Annotated[
        str | None, Field(min_length=1, max_length=255, description="EC2 name of ssh_private_key's key pair")
    ] = None
    name_prefix: Annotated[
        str,
        Field(
            pattern=r"^[a-zA-Z][a-zA-Z0-9-]{0,39}$",
            description="Per-cluster security group and key pair are named <prefix>-<cluster id>",
        ),
    ] = "dcluster"
    vpc_id: Annotated[
        str | None,
        Field(pattern=r"^vpc-[0-9a-f]{8,17}$", description="VPC of the clusters; default: the region's default VPC"),
    ] = None
    head_instance_profile_arn: Annotated[
        str | None,
        Field(
            pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/[\w+=,.@/-]+$",
            description="Instance profile of the head (its autoscaler launches the workers); default: Ray "
            "creates ray-autoscaler-v1 with AmazonEC2FullAccess and AmazonS3FullAccess",
        ),
    ] = None

    @field_validator("allowed_cidr")
    @classmethod
    def _check_cidr(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(
                f"allowed_cidr {value!r} is not a network in CIDR form, e.g. 203.0.113.0/24 ({exc})"
            ) from None
        if network.prefixlen == 0:
            raise ValueError(
                f"allowed_cidr {value!r} opens the cluster to the whole internet; name the network "
                "buyers and the launcher connect from, e.g. 203.0.113.0/24"
            )
        return str(network)

    @field_validator("name_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if f"{value}-".lower().startswith("sg-"):
            raise ValueError("name_prefix must not make names that begin with 'sg-' (EC2 refuses them)")
        return value

    @model_validator(mode="after")
    def _check_key_and_ami(self) -> AwsSettings:
        if (self.ssh_private_key is None) != (self.key_name is None):
            raise ValueError(
                "set both ssh_private_key and key_name (the operator's key pair), or neither (a key pair per cluster)"
            )
        if self.image_id is None and self.region not in _ray_default_amis():
            raise ValueError(f"Ray has no default AMI for region {self.region!r}; set image_id")
        return self


def _ray_default_amis() -> dict[str, str]:
    from ray.autoscaler._private.aws import config as ray_aws_config  # boto3 and all: load only when needed

    return ray_aws_config.DEFAULT_AMI


def group_name(settings: AwsSettings, cluster_id: str) -> str:
    return f"{settings.name_prefix}-{cluster_id}"


def check_spec(spec: cluster_spec.ClusterSpec, settings: AwsSettings) -> None:
    """Raise InvalidInput when the worker instance type cannot hold what the spec asks of each worker."""
    itype = settings.worker_instance_type
    shape = INSTANCE_SHAPES.get(itype)
    if shape is None:
        if spec.gpu_model:
            raise errors.InvalidInput(
                f"the aws backend's workers are {itype}, whose GPU model is not known here; leave gpu_model out",
                gpu_model=spec.gpu_model,
            )
        return
    if spec.cpus_per_worker > shape.cpus or spec.gpus_per_worker > shape.gpus:
        raise errors.InvalidInput(
            f"the aws backend's workers are {itype} ({shape.cpus} CPUs, {shape.gpus} GPUs); ask for at most that "
            "per worker",
            cpus_per_worker=spec.cpus_per_worker,
            gpus_per_worker=spec.gpus_per_worker,
        )
    if spec.gpu_model and spec.gpu_model != shape.gpu_model:
        raise errors.InvalidInput(
            f"the aws backend's workers are {itype} with {shape.gpu_model or 'no GPU'}; "
            f"ask for that gpu_model or leave it out",
            gpu_model=spec.gpu_model,
        )


def ip_permissions(allowed_cidr: str) -> list[dict[str, Any]]:
    """Inbound rules from outside the cluster: OPEN_PORTS from allowed_cidr, nothing else."""
    network = ipaddress.ip_network(allowed_cidr)
    ranges, key = ("IpRanges", "CidrIp") if network.version == 4 else ("Ipv6Ranges", "CidrIpv6")
    return [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            ranges: [{key: str(network), "Description": f"dcluster: {what}"}],
        }
        for port, what in OPEN_PORTS.items()
    ]


def render_aws_config(
    *, cluster_id: str, spec: cluster_spec.ClusterSpec, settings: AwsSettings, ray_auth_token_path: str | os.PathLike
) -> dict[str, Any]:
    """The launcher config; pass it through ensure_security_group before `create_or_update_cluster`.

    Head: settings.head_instance_type, CPU 0 / GPU 0. Workers: settings.worker_instance_type,
    min = max = spec.num_workers, the spec's CPUs and GPUs, labelled dcluster.io/cluster=<cluster id>.
    Every node starts Ray with RAY_AUTH_MODE=token and the token file synced from ray_auth_token_path
    (only the path is in the config). Pure: no AWS call.
    """
    if not _CLUSTER_ID_RE.match(cluster_id):
        raise ValueError(f"cluster_id {cluster_id!r} is not a cluster id (c-<12 hex>)")
    if spec.backend != "aws":
        raise ValueError(f"spec.backend is {spec.backend!r}; render_aws_config renders backend 'aws' only")
    ray_auth_token_path = os.fspath(ray_auth_token_path)
    if not os.path.isabs(ray_auth_token_path):
        raise ValueError("ray_auth_token_path must be the absolute path of the token file (never the token)")
    check_spec(spec, settings)

    config = templates.load(TEMPLATE)
    config["cluster_name"] = cluster_id
    config["max_workers"] = spec.num_workers
    provider = config["provider"]
    provider["region"] = settings.region
    provider["security_group"] = {
        "GroupName": group_name(settings, cluster_id),
        "IpPermissions": ip_permissions(settings.allowed_cidr),
    }
    config["auth"]["ssh_user"] = settings.ssh_user
    head, worker = config["available_node_types"]["head"], config["available_node_types"]["worker"]
    head["node_config"]["InstanceType"] = settings.head_instance_type
    worker["node_config"]["InstanceType"] = settings.worker_instance_type
    if settings.ssh_private_key is not None:
        config["auth"]["ssh_private_key"] = str(settings.ssh_private_key)
        for node_type in (head, worker):
            node_type["node_config"]["KeyName"] = settings.key_name
    else:
        # Ray's bootstrap creates it, and its private key at ~/.ssh/<name>.pem; one per cluster, so the
        # key that every head carries (for its autoscaler) opens no other cluster's nodes.
        provider["key_pair"] = {"key_name": group_name(settings, cluster_id)}
    if settings.image_id:
        for node_type in (head, worker):
            node_type["node_config"]["ImageId"] = settings.image_id
    if settings.head_instance_profile_arn:
        head["node_config"]["IamInstanceProfile"] = {"Arn": settings.head_instance_profile_arn}

    head["labels"] = {labels.CLUSTER_LABEL: cluster_id}
    worker["resources"] = {"CPU": spec.cpus_per_worker, "GPU": spec.gpus_per_worker}
    worker["labels"] = {labels.CLUSTER_LABEL: cluster_id}
    shape = INSTANCE_SHAPES.get(settings.worker_instance_type)
    if spec.gpus_per_worker and shape and shape.gpu_model:
        worker["labels"][labels.GPU_LABEL] = labels.ray_label_value(shape.gpu_model)
    worker["min_workers"] = worker["max_workers"] = spec.num_workers

    config["file_mounts"] = {TOKEN_REMOTE_PATH: ray_auth_token_path}
    ray_version = importlib.metadata.version("ray")
    config["setup_commands"] = [cmd.replace("{ray_version}", ray_version) for cmd in config["setup_commands"]]
    return config


# --- the security group -------------------------------------------------------------------------------
#
# Ray's bootstrap (ray/autoscaler/_private/aws/config.py, _configure_security_group) creates the group
# named provider.security_group.GroupName when no node type names SecurityGroupIds, and then authorizes
# an all-traffic rule from the group itself, TCP 22 from 0.0.0.0/0 (_create_default_ssh_inbound_rules,
# unconditional: no config knob turns it off) and IpPermissions. The supported way around it is
# SecurityGroupIds in every node_config: Ray then leaves groups and rules alone and picks subnets in
# that group's VPC. ensure_security_group makes the group that way, with exactly the rules we want.

Grant = tuple[str, int, int, str, str]  # (protocol, from port, to port, source kind, source)
_SOURCES = {
    "IpRanges": "CidrIp",
    "Ipv6Ranges": "CidrIpv6",
    "UserIdGroupPairs": "GroupId",
    "PrefixListIds": "PrefixListId",
}


def grants(permissions: Iterable[dict[str, Any]]) -> Iterator[tuple[Grant, str | None]]:
    """One (grant, description) per protocol/port range/source: the unit AWS authorizes and revokes."""
    for perm in permissions:
        proto = str(perm.get("IpProtocol", "-1"))
        from_port, to_port = (-1, -1) if proto == "-1" else (int(perm.get("FromPort", -1)), int(perm.get("ToPort", -1)))
        for kind, key in _SOURCES.items():
            for source in perm.get(kind, []):
                yield (proto, from_port, to_port, kind, source[key]), source.get("Description")


def permission(grant: Grant, description: str | None) -> dict[str, Any]:
    proto, from_port, to_port, kind, source = grant
    entry = {_SOURCES[kind]: source, **({"Description": description} if description else {})}
    perm: dict[str, Any] = {"IpProtocol": proto, kind: [entry]}
    if proto != "-1":
        perm.update(FromPort=from_port, ToPort=to_port)
    return perm


def describe_grant(grant: Grant) -> str:
    proto, from_port, to_port = grant[:3]
    if proto == "-1":
        return "all traffic"
    name = {"6": "tcp", "17": "udp", "1": "icmp"}.get(proto, proto)
    return f"{name} {from_port}" if from_port == to_port else f"{name} {from_port}-{to_port}"


def _all_ports(grant: Grant) -> bool:
    proto, from_port, to_port = grant[:3]
    return proto == "-1" or (proto in ("tcp", "udp", "6", "17") and from_port <= 1 and to_port >= 65535)


def security_group_findings(ip_permissions: list[dict[str, Any]], *, group_id: str | None = None) -> list[str]:
    """Problems in a security group's inbound rules (EC2's IpPermissions shape); [] when there are none.

    Reports any rule open to the world (0.0.0.0/0, ::/0), all ports (or all traffic) open to a network,
    and, when group_id is given, rules that admit another security group than the cluster's own.
    """
    findings = []
    for grant, _ in grants(ip_permissions):
        _, _, _, kind, source = grant
        what = describe_grant(grant)
        if kind in ("IpRanges", "Ipv6Ranges"):
            network = ipaddress.ip_network(source, strict=False)
            if network.prefixlen == 0:
                findings.append(f"{what} is open to the whole internet ({source})")
            if _all_ports(grant):
                findings.append(f"{what} (every port) is open to {source}")
        elif kind == "UserIdGroupPairs" and group_id is not None and source != group_id:
            findings.append(f"{what} is open to another security group ({source})")
    return findings
