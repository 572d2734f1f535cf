"""The market launcher config: rendered from market.yaml, accepted by Ray's own validator and loaders."""

from __future__ import annotations

import copy
import re
from unittest import mock

import pytest
from ray._private import label_utils
from ray.autoscaler._private.constants import DISABLE_LAUNCH_CONFIG_CHECK_KEY
from ray.autoscaler._private.node_launcher import BaseNodeLauncher
from ray.autoscaler._private.providers import _get_default_config
from ray.autoscaler._private.util import fillout_defaults, prepare_config, validate_config
from ray.autoscaler.tags import TAG_RAY_LAUNCH_CONFIG
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

from actors.backends.market import launcher_config as market
from configs import labels
from dcl_core import cluster_spec

CID = "c-00112233aabb"
URL = "https://platform.example:8443/"
TOKEN = "eyJ.cluster-token." + "t" * 20

SPECS = [
    cluster_spec.ClusterSpec(num_workers=1, duration_s=600),
    cluster_spec.ClusterSpec(
        num_workers=4, gpus_per_worker=8, gpu_model="NVIDIA H100 80GB HBM3", cpus_per_worker=32, duration_s=3600
    ),
    cluster_spec.ClusterSpec(num_workers=64, gpus_per_worker=1, cpus_per_worker=256, duration_s=7 * 24 * 3600),
]


def render(spec: cluster_spec.ClusterSpec) -> dict:
    return market.render_market_config(cluster_id=CID, spec=spec, platform_url=URL, provider_token=TOKEN)


def commands(config: dict) -> list[str]:
    keys = [k for k in config if k.endswith("_commands")]
    return [cmd for k in keys for cmd in config[k]]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.num_workers}x{s.gpus_per_worker}gpu")
def test_rendered_config_passes_rays_validator_and_loaders(spec):
    config = render(spec)
    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))  # what the launcher's _bootstrap_config does
    validate_config(prepared)
    fillout_defaults(copy.deepcopy(config))
    head_view = AutoscalingConfig(copy.deepcopy(config))  # what the head's v2 autoscaler loads
    assert head_view.get_head_node_type() == "head"
    assert head_view.get_max_num_worker_nodes() == spec.num_workers
    assert head_view.get_node_labels("worker") == {labels.CLUSTER_LABEL: CID}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.num_workers}x{s.gpus_per_worker}gpu")
def test_workers_are_fixed_at_num_workers_and_the_head_runs_nothing(spec):
    config = render(spec)
    head, worker = config["available_node_types"]["head"], config["available_node_types"]["worker"]
    assert config["max_workers"] == worker["min_workers"] == worker["max_workers"] == spec.num_workers
    assert head["resources"] == {"CPU": 0, "GPU": 0} and head["min_workers"] == head["max_workers"] == 0
    assert head["node_config"] == {"role": "head"} and worker["node_config"] == {"role": "worker"}
    expected = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if spec.gpus_per_worker else {})}
    assert worker["resources"] == expected
    assert worker["labels"] == {"dcluster.io/cluster": CID}
    label_utils.validate_node_label_syntax(worker["labels"])
    assert config["head_node_type"] == "head" and config["upscaling_speed"] >= 100


def test_gpu_is_left_out_when_zero():
    assert "GPU" not in render(SPECS[0])["available_node_types"]["worker"]["resources"]


def test_provider_block_and_identity():
    config = render(SPECS[1])
    assert config["cluster_name"] == CID
    assert config["provider"] == {
        "type": "external",
        "module": "worker.node_provider.market_provider.MarketNodeProvider",
        "platform_url": "https://platform.example:8443",
        "cluster_id": CID,
        "token": TOKEN,
        "platform_ca": None,
        DISABLE_LAUNCH_CONFIG_CHECK_KEY: True,
    }
    assert config["auth"] == {"ssh_user": "dcluster"}


def test_an_https_platform_hands_its_certificate_authority_to_the_node_provider():
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    config = market.render_market_config(
        cluster_id=CID, spec=SPECS[0], platform_url=URL, provider_token=TOKEN, platform_ca=ca
    )
    assert config["provider"]["platform_ca"] == ca
    validate_config(config)
    plain = market.render_market_config(
        cluster_id=CID, spec=SPECS[0], platform_url="http://127.0.0.1:8000", provider_token=TOKEN, platform_ca=ca
    )
    assert plain["provider"]["platform_ca"] is None  # a CA means nothing to plain HTTP


def test_everything_the_external_defaults_leave_out_is_set():
    config = render(SPECS[0])
    assert set(_get_default_config(config["provider"])) - set(config) <= {"head_node", "worker_nodes"}
    for key in (
        "file_mounts",
        "cluster_synced_files",
        "file_mounts_sync_continuously",
        "rsync_exclude",
        "rsync_filter",
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "idle_timeout_minutes",
    ):
        assert key in config
    assert not config["file_mounts"] and not config["file_mounts_sync_continuously"]
    assert config["setup_commands"] == config["head_setup_commands"] == config["worker_setup_commands"] == []


def test_start_commands_use_the_agents_ports_and_never_stop_ray():
    config = render(SPECS[1])
    assert all("ray stop" not in cmd for cmd in commands(config))
    (head,) = config["head_start_ray_commands"]
    (worker,) = config["worker_start_ray_commands"]
    assert head.startswith("AUTOSCALER_UPDATE_INTERVAL_S=1 ray start --head $DCL_RAY_PORT_FLAGS ")
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head and "--disable-usage-stats" in head
    assert worker.startswith("ray start --address=$RAY_HEAD_IP:$DCL_HEAD_GCS_PORT $DCL_RAY_PORT_FLAGS")


def test_head_flags_agree_with_the_resource_override():
    # The updater exports the head type's resources as RAY_OVERRIDE_RESOURCES, which wins over
    # --num-cpus/--num-gpus (ray/_private/resource_and_label_spec.py): they must say the same.
    config = render(SPECS[1])
    (head,) = config["head_start_ray_commands"]
    flags = dict(re.findall(r"--num-(cpus|gpus)=(\d+)", head))
    assert {"CPU": int(flags["cpus"]), "GPU": int(flags["gpus"])} == config["available_node_types"]["head"]["resources"]


def test_rendering_never_changes_the_template():
    render(SPECS[2])
    again = render(SPECS[0])
    assert again["available_node_types"]["worker"]["resources"] == {"CPU": 1}
    assert again["max_workers"] == 1


@pytest.mark.parametrize("bad", [dict(cluster_id="cluster-1"), dict(platform_url=""), dict(provider_token="")])
def test_bad_inputs_are_refused(bad):
    args = dict(cluster_id=CID, spec=SPECS[0], platform_url=URL, provider_token=TOKEN) | bad
    with pytest.raises(ValueError):
        market.render_market_config(**args)


def test_workers_opened_ahead_carry_the_tags_the_head_autoscaler_gives_the_workers_it_launches():
    """The head's autoscaler starts Ray on a worker the platform opened ahead only when it takes it for one
    of its own: Ray's NodeLauncher, given the rendered config, tags its workers exactly so (but the hash)."""
    config = prepare_config(render(SPECS[1]))
    seen = []
    provider = mock.Mock(create_node_with_resources_and_labels=lambda _cfg, tags, *_: seen.append(tags) or {})
    launcher = BaseNodeLauncher(
        provider,
        mock.Mock(),
        mock.Mock(),
        mock.Mock(),
        prom_metrics=mock.Mock(),
        node_types=config["available_node_types"],
    )
    launcher.launch_node(config, 1, market.WORKER_NODE_TYPE)
    (launched,) = seen
    ahead = market.opened_ahead_tags(CID)
    assert market.is_opened_ahead(ahead) and not market.is_opened_ahead(market.claimed(ahead))
    assert market.claimed(ahead) == {k: v for k, v in launched.items() if k != TAG_RAY_LAUNCH_CONFIG}
    # Without the hash, only a disabled launch-config check keeps the autoscaler from replacing them.
    assert config["provider"][DISABLE_LAUNCH_CONFIG_CHECK_KEY] is True
