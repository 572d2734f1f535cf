"""The agent's config file: flag > DCLUSTER_* > file > default, and a clear error naming the file and key."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from worker.agent import cli as agent_cli
from worker.agent import config_file


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def parse(argv: list[str], environ: dict[str, str] | None = None):
    return agent_cli.build_parser(argv=argv, environ=environ or {}).parse_args(argv)


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    path = write(
        tmp_path,
        'platform-url = "https://from-file"\nusername = "prov1"\nprice_per_gpu_hour = 0.8\n'
        "gpus = 2\nlease_pids = 512\ni-understand-leases-are-unsandboxed = false\n",
    )
    env = {"DCLUSTER_PRICE_PER_GPU_HOUR": "0.9", "DCLUSTER_GPUS": "3"}
    args = parse(["--config", str(path), "--gpus", "4"], env)
    assert (args.platform_url, args.username, args.price_per_gpu_hour, args.gpus, args.lease_pids) == (
        "https://from-file",  # the file
        "prov1",
        0.9,  # the environment over the file
        4,  # the flag over both
        512,
    )
    assert parse([], {}).lease_pids == 4096 and parse([], {}).platform_url is None  # defaults without a file
    # $DCLUSTER_CONFIG names the file too.
    assert parse([], {"DCLUSTER_CONFIG": str(path)}).username == "prov1"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("pasword_file = '/x'\n", "unknown key 'pasword_file'"),
        ("price_per_gpu_hour = '0.8'\n", "price_per_gpu_hour = '0.8': expected a number (no quotes)"),
        ("gpus = 1.5\n", "gpus = 1.5: expected a whole number"),
        ("runtime = 'podman'\n", "runtime = 'podman': one of docker, bwrap, none"),
        ("enroll = true\n", "unknown key 'enroll'"),  # a one-off switch has no place in a standing config
        ("i_understand_leases_are_unsandboxed = 'yes'\n", "a switch takes true or false"),
        ("state_dir = ['a']\n", "expected a path"),
        ("platform_url = \n", "not valid TOML"),
    ],
)
def test_a_bad_key_or_value_is_a_usage_error_naming_the_file_and_key(tmp_path, capsys, text, named):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as e:
        agent_cli.main(["--config", str(path), "--detect-only"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"config file {path}" in err and named in err, err


def test_a_config_named_but_missing_or_writable_by_others_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        agent_cli.main(["--config", str(tmp_path / "nope.toml"), "--detect-only"])
    assert "cannot read it" in capsys.readouterr().err
    path = write(tmp_path, 'runtime = "none"\n', mode=0o666)
    with pytest.raises(SystemExit):
        agent_cli.main(["--config", str(path), "--detect-only"])
    assert "writable by other users" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner check applies to an agent running as root")
def test_root_refuses_a_config_another_user_owns(tmp_path, capsys):
    path = write(tmp_path, 'runtime = "none"\n')
    os.chown(path, 65534, 65534)
    with pytest.raises(SystemExit):
        agent_cli.main(["--config", str(path), "--detect-only"])
    assert "belongs to uid 65534" in capsys.readouterr().err


def test_the_file_drives_the_real_command(tmp_path, capsys):
    path = write(tmp_path, 'gpus = 2\ngpu_model = "RTX 4090"\n')
    assert agent_cli.main(["--config", str(path), "--detect-only"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert [g["model"] for g in spec["gpus"]] == ["RTX 4090", "RTX 4090"]


def test_render_writes_what_the_reader_reads_back(tmp_path):
    values = {"platform_url": 'https://x/"q"\\', "price_per_gpu_hour": 0.8, "gpus": 0, "name": "böx", "on": True}
    rendered = config_file.render(values)
    assert tomllib.loads(rendered) == values
