"""The EC2 calls of the aws backend (boto3): the cluster's locked-down security group before Ray's bootstrap,
its security group and key pair after teardown. The launcher's process calls these (launch.py)."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from actors.backends.aws import rules
from configs import labels

logger = logging.getLogger(__name__)


# boto3's clients are made at run time and carry no types: an EC2 client is Any here.
Ec2Client = Any


def ec2_client(config: dict[str, Any]) -> Ec2Client:
    """The EC2 client of the cluster's region, with the launcher's credentials (the boto3 chain or
    provider.aws_credentials)."""
    import boto3

    return boto3.client(
        "ec2", region_name=config["provider"]["region"], **config["provider"].get("aws_credentials", {})
    )


def _default_vpc(ec2: Ec2Client) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise RuntimeError("this region has no default VPC; set vpc_id in the platform's aws settings")
    return str(vpcs[0]["VpcId"])


def _find_group(ec2: Ec2Client, vpc_id: str, name: str) -> dict[str, Any] | None:
    found = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [name]}]
    )["SecurityGroups"]
    return found[0] if found else None


# Ray's bootstrap (ray/autoscaler/_private/aws/config.py, _configure_security_group) creates the group
# named provider.security_group.GroupName when no node type names SecurityGroupIds, and then authorizes
# an all-traffic rule from the group itself, TCP 22 from 0.0.0.0/0 (_create_default_ssh_inbound_rules,
# unconditional: no config knob turns it off) and IpPermissions. The supported way around it is
# SecurityGroupIds in every node_config: Ray then leaves groups and rules alone and picks subnets in
# that group's VPC. ensure_security_group makes the group that way, with exactly the rules we want.
def ensure_security_group(config: dict[str, Any], *, vpc_id: str | None = None) -> dict[str, Any]:
    """Create or repair the cluster's security group; return config with every node type in it.

    Rules afterwards, exactly: all traffic from the group itself, and provider.security_group.IpPermissions
    (the ports open to allowed_cidr). Anything else, e.g. the SSH-from-everywhere rule Ray's bootstrap adds
    when it makes the group itself, is revoked. Idempotent; AWS calls use the launcher's credentials
    (the standard boto3 chain, or provider.aws_credentials).
    """
    wanted_sg = config["provider"]["security_group"]
    name, outside = wanted_sg["GroupName"], wanted_sg.get("IpPermissions", [])
    if problems := rules.security_group_findings(outside):
        raise ValueError(f"refusing the rules of security group {name}: {'; '.join(problems)}")
    ec2 = ec2_client(config)
    vpc_id = vpc_id or _default_vpc(ec2)
    group = _find_group(ec2, vpc_id, name)
    if group is None:
        from botocore.exceptions import ClientError

        cluster = config["cluster_name"]
        try:
            ec2.create_security_group(
                GroupName=name,
                VpcId=vpc_id,
                Description=f"dcluster sub-cluster {cluster}",
                TagSpecifications=[
                    {
                        "ResourceType": "security-group",
                        "Tags": [
                            {"Key": labels.CLUSTER_LABEL, "Value": cluster},
                            {"Key": "ray-cluster-name", "Value": cluster},
                        ],
                    }
                ],
            )
            logger.info("created security group %s in %s", name, vpc_id)
        except ClientError as exc:  # made meanwhile by a concurrent call: use that one
            if exc.response.get("Error", {}).get("Code") != "InvalidGroup.Duplicate":
                raise
        group = _find_group(ec2, vpc_id, name)
        if group is None:
            raise RuntimeError(f"security group {name} in {vpc_id} was created but cannot be found")
    group_id, current = group["GroupId"], group.get("IpPermissions", [])
    inside = {
        "IpProtocol": "-1",
        "UserIdGroupPairs": [{"GroupId": group_id, "Description": "dcluster: between the cluster's own nodes"}],
    }
    wanted = dict(rules.grants([inside, *outside]))
    have = dict(rules.grants(current))
    if extra := [rules.permission(g, None) for g in have if g not in wanted]:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=extra)
        logger.warning(
            "revoked from security group %s: %s", name, ", ".join(map(rules.describe_grant, have.keys() - wanted))
        )
    if missing := [rules.permission(g, d) for g, d in wanted.items() if g not in have]:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=missing)
    config = copy.deepcopy(config)
    for node_type in config["available_node_types"].values():
        node_type["node_config"]["SecurityGroupIds"] = [group_id]
    return config


def delete_cluster_resources(config: dict[str, Any]) -> bool:
    """After teardown: delete the cluster's security group and per-cluster key pair (Ray leaves both).

    True when both are gone; False while terminating instances still hold the group (call again later).
    Idempotent.
    """
    from botocore.exceptions import ClientError

    ec2 = ec2_client(config)
    name = config["provider"]["security_group"]["GroupName"]
    done = True
    for group in ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]:
        try:
            ec2.delete_security_group(GroupId=group["GroupId"])
            logger.info("deleted security group %s (%s)", name, group["GroupId"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "DependencyViolation":
                done = False
            elif code != "InvalidGroup.NotFound":
                raise
    key_name = config["provider"].get("key_pair", {}).get("key_name")
    if key_name:
        ec2.delete_key_pair(KeyName=key_name)
        Path(os.path.expanduser(f"~/.ssh/{key_name}.pem")).unlink(missing_ok=True)
    return done
