"""The built wheel stands alone: everything the product reads at run time (the Serve config template, the demo's
job, the console, the launcher templates, the migrations) is package data, found beside the installed code,
never through a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIME_FILES = [
    "cli/platform/serve.yaml",
    "cli/examples/train.py",
    "configs/market.yaml",
    "configs/aws.yaml",
    "actors/db/migrations/env.py",
    "actors/db/migrations/script.py.mako",
    "serve_app/console/templates/base.html",
    "worker/agent/systemd/dcluster-agent.service",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_holds_every_file_read_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [f for f in RUN_TIME_FILES if f not in names] == []
    versions = sorted(p.name for p in (ROOT / "actors/db/migrations/versions").glob("0*.py"))
    assert [v for v in versions if f"actors/db/migrations/versions/{v}" not in names] == []
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


def test_installed_outside_a_checkout_it_finds_its_files_beside_its_code(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import cli.platform.serve_deploy as s, cli.demo as d, actors.db.migrate as m, worker.agent.service as v;"
        "print(s.SERVE_TEMPLATE); print(d.EXAMPLES_DIR / 'train.py'); print(m.SCRIPTS); print(v.template_file());"
        "print(m.head_revision())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,  # not the checkout: the installed copy is the only one on the path first
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    *paths, head = done.stdout.split()
    assert all(Path(p).exists() and Path(p).is_relative_to(site) for p in paths), paths
    assert head == Path(sorted((ROOT / "actors/db/migrations/versions").glob("0*.py"))[-1]).name[:4]
