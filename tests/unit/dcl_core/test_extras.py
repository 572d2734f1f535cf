"""dcl_core.extras reads each extra's packages from the installed metadata; each role's entry point refuses to run
without its extra, naming the pip command (tests/unit/test_wheel.py does the same in real fresh installs)."""

from __future__ import annotations

import importlib.metadata

import pytest
from pydantic import ValidationError

from cli import main as cli_main
from configs import aws
from dcl_core import extras
from worker.agent import entry


def _without(monkeypatch, *names: str) -> None:
    """As if these distributions were not installed."""
    real = extras.is_installed
    gone = {extras.canonical_name(n) for n in names}
    monkeypatch.setattr(extras, "is_installed", lambda name: extras.canonical_name(name) not in gone and real(name))


def test_each_extra_names_its_own_packages_and_follows_the_extras_it_names():
    requirements = importlib.metadata.requires(extras.DISTRIBUTION)
    agent = dict(extras.named_by(requirements, "agent"))
    platform = dict(extras.named_by(requirements, "platform"))
    assert agent["ray"] == ["default"] and {"nvidia-ml-py", "psutil"} <= set(agent)
    assert not {"fastapi", "boto3", "asyncpg", "sqlalchemy", "alembic"} & set(agent)
    assert platform[extras.DISTRIBUTION] == ["agent"] and platform["ray"] == ["default", "serve"]
    assert {"fastapi", "sqlalchemy", "alembic", "asyncpg", "bcrypt"} <= set(platform)
    assert "boto3" not in platform and dict(extras.named_by(requirements, "aws")) == {"boto3": []}
    assert extras.missing("platform") == extras.missing("agent") == extras.missing("aws") == []  # this venv: all


def test_missing_reports_what_an_extra_lacks_including_through_the_extras_it_names(monkeypatch):
    _without(monkeypatch, "psutil", "asyncpg", "boto3")
    assert extras.missing("agent") == ["psutil"]
    assert sorted(extras.missing("platform")) == ["asyncpg", "psutil"]  # psutil through [agent]
    assert extras.missing("aws") == ["boto3"]
    assert extras.install_command("aws") == "pip install 'decentralized-clusters[aws]'"


def test_a_source_tree_without_an_installed_distribution_has_nothing_to_compare(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(extras.importlib.metadata, "requires", not_installed)
    assert extras.missing("platform") == []


def test_requirements_with_platform_markers_are_optional_never_missing():
    requirements = ['uvloop>=0.19; sys_platform != "win32" and extra == "platform"', 'fastapi; extra == "platform"']
    assert extras.named_by(requirements, "platform") == [("fastapi", [])]


@pytest.mark.parametrize("argv", [["up"], ["down"], ["status"], ["demo"]])
def test_platform_commands_name_the_platform_extra_when_it_is_missing(monkeypatch, capsys, tmp_path, argv):
    _without(monkeypatch, "sqlalchemy", "fastapi")
    assert cli_main.main([*argv, "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"dcluster {argv[0]}: error: `dcluster {argv[0]}` runs the platform, whose packages this install lacks "
        "(fastapi, sqlalchemy); install them with: pip install 'decentralized-clusters[platform]'"
    )
    assert not list(tmp_path.iterdir())  # refused before touching the state dir


def test_the_agent_names_the_agent_extra_when_it_is_missing(monkeypatch, capsys):
    _without(monkeypatch, "nvidia-ml-py")
    assert entry.main(["--version"]) == 1
    assert capsys.readouterr().err.strip() == (
        "dcluster-agent: error: this install lacks the provider agent's packages (nvidia-ml-py); "
        "install them with: pip install 'decentralized-clusters[agent]'"
    )


def test_the_aws_settings_need_the_aws_extra(monkeypatch):
    _without(monkeypatch, "boto3")
    with pytest.raises(ValidationError, match=r"lacks \(boto3\): pip install 'decentralized-clusters\[aws\]'"):
        aws.AwsSettings(allowed_cidr="198.51.100.0/24")
