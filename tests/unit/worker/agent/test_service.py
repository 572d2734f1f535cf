"""dcluster-agent install-service: the unit (verified by systemd-analyze), the config (0600, read back by the
agent), and systemctl only when asked to start."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from worker.agent import cli as agent_cli
from worker.agent import service

OPTIONS = [
    "--platform-url",
    "https://market.example",
    "--username",
    "prov1",
    "--price-per-gpu-hour",
    "0.8",
    "--price-per-cpu-hour",
    "0.02",
    "--runtime",
    "bwrap",
]


def install(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    config, units = tmp_path / "etc" / "agent.toml", tmp_path / "units"
    code = agent_cli.main(
        ["install-service", "--config", str(config), "--unit-dir", str(units), "--no-start", *OPTIONS, *extra]
    )
    assert code == 0
    return config, units / "dcluster-agent.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_written_unit_passes_systemd_analyze_verify(tmp_path):
    _, unit = install(tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    text = unit.read_text()
    assert f"ExecStart={service.agent_executable()} --config {tmp_path / 'etc' / 'agent.toml'}" in text
    assert "Restart=on-failure" in text and "KillMode=process" in text
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_a_broken_unit_is_what_verify_would_catch(tmp_path):
    """The verify test above means something: the same check refuses a unit with an unknown program."""
    broken = tmp_path / "broken.service"
    broken.write_text(service.render_unit(Path("/nonexistent/dcluster-agent"), tmp_path / "agent.toml"))
    done = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "is not executable" in done.stderr


def test_the_config_is_written_0600_once_and_the_agent_reads_it_back(tmp_path, capsys):
    password_file = tmp_path / "pw"
    config, _ = install(tmp_path, "--password-file", str(password_file))
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    values = tomllib.loads(config.read_text())
    assert values["platform_url"] == "https://market.example" and values["price_per_gpu_hour"] == 0.8
    assert values["password_file"] == str(password_file) and Path(values["state_dir"]).is_absolute()
    assert "lease_pids" not in values  # defaults stay out: a later release's default applies
    args = agent_cli.build_parser(argv=["--config", str(config)], environ={}).parse_args(["--config", str(config)])
    assert (args.username, args.price_per_cpu_hour, args.runtime) == ("prov1", 0.02, "bwrap")
    # Installed again with other options: the provider's file is kept as it is.
    config.write_text(config.read_text().replace("prov1", "prov2"))
    install(tmp_path, "--username", "someone-else")
    assert "prov2" in config.read_text() and "kept as it is" in capsys.readouterr().out


def test_dry_run_writes_nothing_and_a_missing_option_writes_nothing(tmp_path, capsys):
    config, units = tmp_path / "agent.toml", tmp_path / "units"
    assert (
        agent_cli.main(["install-service", "--config", str(config), "--unit-dir", str(units), "--dry-run", *OPTIONS])
        == 0
    )
    out = capsys.readouterr().out
    assert "ExecStart=" in out and 'platform_url = "https://market.example"' in out
    assert not config.exists() and not units.exists()
    with pytest.raises(SystemExit) as e:
        agent_cli.main(["install-service", "--config", str(config), "--unit-dir", str(units), "--no-start"])
    assert e.value.code == 2 and "--platform-url, --username" in capsys.readouterr().err
    assert not config.exists() and not units.exists()


def test_start_reloads_then_enables_and_a_failure_is_reported(tmp_path):
    parser = agent_cli.build_parser(agent_cli.INSTALL_SERVICE, environ={})
    argv = ["--config", str(tmp_path / "a.toml"), "--unit-dir", str(tmp_path / "u"), *OPTIONS]
    defaults = vars(agent_cli.build_parser(agent_cli.INSTALL_SERVICE, environ={}, read_config=False).parse_args([]))
    ran: list[list[str]] = []
    assert service.install(parser, parser.parse_args(argv), defaults, run=lambda a: ran.append(a) or 0) == 0
    assert ran == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "dcluster-agent"]]
    assert service.install(parser, parser.parse_args(argv), defaults, run=lambda a: 1) == 1


def test_a_path_systemd_would_misread_is_refused():
    with pytest.raises(ValueError):
        service.render_unit(Path("/opt/my venv/bin/dcluster-agent"), Path("/etc/dcluster/agent.toml"))
    assert "--config /etc/100%%/a.toml" in service.render_unit(Path("/x"), Path("/etc/100%/a.toml"))
