"""The platform's `aws:` settings (AwsSettings), which enable the aws backend (actors/backends/aws/)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from dcl_core import domain, extras


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

    @model_validator(mode="before")
    @classmethod
    def _check_installed(cls, data: object) -> object:
        # The backend runs on boto3 (through Ray's AWS provider): without the [aws] extra it is refused here,
        # when the platform's settings are read, not at the first cluster.
        absent = extras.missing("aws")
        if absent:
            raise ValueError(
                f"the aws backend needs packages this install lacks ({', '.join(absent)}): "
                f"{extras.install_command('aws')}"
            )
        return data

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
