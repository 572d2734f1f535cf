"""Render and check the cluster-launcher config of a buyer's sub-cluster on the aws backend (configs/aws.yaml);
no EC2 call (ec2.py makes them, in the launcher's process)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from actors.backends.aws import rules
from actors.settings import platform_ray_version
from configs import aws as aws_settings
from configs import labels, templates
from dcl_core import cluster_spec, errors, ids

TEMPLATE = "aws.yaml"
TOKEN_REMOTE_PATH = "~/ray_auth_token"
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


def group_name(settings: aws_settings.AwsSettings, cluster_id: str) -> str:
    return f"{settings.name_prefix}-{cluster_id}"


def check_spec(spec: cluster_spec.ClusterSpec, settings: aws_settings.AwsSettings) -> None:
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


def render_aws_config(
    *,
    cluster_id: str,
    spec: cluster_spec.ClusterSpec,
    settings: aws_settings.AwsSettings,
    ray_auth_token_path: str | os.PathLike[str],
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
        "IpPermissions": rules.ip_permissions(settings.allowed_cidr),
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
    ray_version = platform_ray_version()
    config["setup_commands"] = [cmd.replace("{ray_version}", ray_version) for cmd in config["setup_commands"]]
    return config
