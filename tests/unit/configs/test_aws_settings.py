"""configs.aws.AwsSettings: the platform's `aws:` block refuses a network open to the world, half a key pair,
unknown keys and regions without an AMI."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from configs import aws

CIDR = "203.0.113.0/24"


@pytest.mark.parametrize(
    "cidr, match",
    [
        ("0.0.0.0/0", "whole internet"),
        ("::/0", "whole internet"),
        ("0.0.0.0/0 ", "whole internet"),
        ("10.0.0.0/33", "not a network"),
        ("10.0.0.1/24", "not a network"),
        ("anywhere", "not a network"),
        ("", "not a network"),
    ],
)
def test_allowed_cidr_refuses_the_world_and_nonsense(cidr, match):
    with pytest.raises(ValidationError, match=match):
        aws.AwsSettings(allowed_cidr=cidr)


def test_allowed_cidr_is_normalized():
    assert aws.AwsSettings(allowed_cidr="198.51.100.7").allowed_cidr == "198.51.100.7/32"
    assert aws.AwsSettings(allowed_cidr="2001:DB8::/32").allowed_cidr == "2001:db8::/32"


def test_settings_refuse_unknown_fields_half_a_key_and_regions_without_an_ami(tmp_path):
    with pytest.raises(ValidationError, match="Extra inputs"):
        aws.AwsSettings(allowed_cidr=CIDR, redis_password="password")
    with pytest.raises(ValidationError, match="both ssh_private_key and key_name"):
        aws.AwsSettings(allowed_cidr=CIDR, key_name="ops")
    with pytest.raises(ValidationError, match="set image_id"):
        aws.AwsSettings(allowed_cidr=CIDR, region="af-south-1")
    aws.AwsSettings(allowed_cidr=CIDR, region="af-south-1", image_id="ami-0123456789abcdef0")
    with pytest.raises(ValidationError, match="sg-"):
        aws.AwsSettings(allowed_cidr=CIDR, name_prefix="sg")
    assert aws.AwsSettings(allowed_cidr=CIDR).model_dump() == {
        "allowed_cidr": CIDR,
        "region": "us-west-2",
        "head_instance_type": "t3.xlarge",
        "worker_instance_type": "g4dn.xlarge",
        "image_id": None,
        "ssh_user": "ubuntu",
        "ssh_private_key": None,
        "key_name": None,
        "name_prefix": "dcluster",
        "vpc_id": None,
        "head_instance_profile_arn": None,
    }
