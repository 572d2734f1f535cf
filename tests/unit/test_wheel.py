"""The built wheel stands alone: everything the product reads at run time (the Serve config template, the demo's
job, the console, the launcher templates, the migrations) is package data, found beside the installed code,
never through a checkout; and each role's install (the base: buyers; [agent]: providers) holds what that role
imports and nothing of the platform, checked in fresh virtualenvs outside the checkout."""

from __future__ import annotations

import os
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


# What only the control plane (or its aws backend) uses: never in an agent's or a buyer's install.
PLATFORM_ONLY = ["fastapi", "starlette", "uvicorn", "boto3", "asyncpg", "sqlalchemy", "alembic", "aiosqlite", "bcrypt"]


def _fresh_venv(wheel: Path, tmp_path: Path, extra: str) -> tuple[Path, dict[str, str]]:
    """A new virtualenv outside the checkout with the wheel installed as a user would (pip resolving its
    requirements, at the locked versions); its bin/ and an environment with nothing of this venv or checkout.
    This venv's pip installs into it (`pip --python`): seeding the new one with its own pip costs ~15 s."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, capture_output=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    done = subprocess.run(
        [*_pip(venv / "bin"), "install", "--quiet", "-c", ROOT / "constraints.txt", f"{wheel}{extra}"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return venv / "bin", env


def _pip(bin_dir: Path) -> list:
    return [sys.executable, "-m", "pip", "--python", bin_dir / "python"]


def _run(args: list, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=180, env=env, cwd=cwd)


def _installed(bin_dir: Path, env: dict[str, str], cwd: Path) -> set[str]:
    listing = _run([bin_dir / "python", "-c", _LIST_DISTRIBUTIONS], env, cwd)
    assert listing.returncode == 0, listing.stderr
    return set(listing.stdout.split())


_LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, re;"
    "print(*sorted({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in m.distributions()}))"
)
# Every module of the agent and the node provider, imported in the fresh install (where nothing else is).
_IMPORT_WORKER = (
    "import importlib, pkgutil, worker;"
    "names = [m.name for m in pkgutil.walk_packages(worker.__path__, 'worker.')];"
    "[importlib.import_module(n) for n in names];"
    "print(worker.__file__); print(len(names))"
)


def test_the_agent_extra_installs_the_agent_and_a_lease_s_ray_and_nothing_of_the_platform(wheel, tmp_path):
    bin_dir, env = _fresh_venv(wheel, tmp_path, "[agent]")
    check = _run([*_pip(bin_dir), "check"], env, tmp_path)
    assert check.returncode == 0, check.stdout  # every requirement of what is installed is satisfied

    installed = _installed(bin_dir, env, tmp_path)
    assert {"ray", "nvidia-ml-py", "psutil", "aiohttp", "httpx"} <= installed  # aiohttp: ray[default]'s job server
    assert [name for name in PLATFORM_ONLY if name in installed] == []

    version = _run([bin_dir / "dcluster-agent", "--version"], env, tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("dcluster-agent 0.1.0 (ray 2.60."), version.stdout

    imported = _run([bin_dir / "python", "-c", _IMPORT_WORKER], env, tmp_path)
    assert imported.returncode == 0, imported.stderr[-4000:]
    where, count = imported.stdout.split()
    assert Path(where).is_relative_to(bin_dir.parent) and int(count) > 20  # the installed copy, every module

    ray_cli = _run([bin_dir / "ray", "--version"], env, tmp_path)  # what a lease's `ray start` runs
    assert ray_cli.returncode == 0 and "2.60." in ray_cli.stdout, ray_cli.stderr
    job_server = _run([bin_dir / "python", "-c", "import ray.dashboard.modules.job.job_head"], env, tmp_path)
    assert job_server.returncode == 0, job_server.stderr[-4000:]

    up = _run([bin_dir / "dcluster", "up", "--state-dir", tmp_path / "state"], env, tmp_path)
    assert up.returncode == 1 and "pip install 'decentralized-clusters[platform]'" in up.stderr, up.stderr


def test_the_base_install_is_the_buyers_cli_and_sdk_alone(wheel, tmp_path):
    bin_dir, env = _fresh_venv(wheel, tmp_path, "")
    installed = _installed(bin_dir, env, tmp_path)
    assert {"httpx", "pydantic", "tenacity", "rich"} <= installed
    assert [name for name in ["ray", "psutil", "pyyaml", "nvidia-ml-py", *PLATFORM_ONLY] if name in installed] == []

    sdk = _run([bin_dir / "python", "-c", "import dcluster; print(dcluster.Client.__name__)"], env, tmp_path)
    assert sdk.returncode == 0 and sdk.stdout.strip() == "Client", sdk.stderr
    version = _run([bin_dir / "dcluster", "--version"], env, tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("dcluster 0.1.0 (ray not installed"), version
    # A buyer's command runs (and fails only for want of a platform there: a clear message, not an ImportError).
    listed = _run([bin_dir / "dcluster", "cluster", "list"], {**env, "HOME": str(tmp_path)}, tmp_path)
    assert listed.returncode != 0 and "Error" not in listed.stderr and "dcluster login" in listed.stderr, listed

    up = _run([bin_dir / "dcluster", "up", "--state-dir", tmp_path / "state"], env, tmp_path)
    assert up.returncode == 1, up.stderr
    assert (
        up.stderr.strip().splitlines()[-1].endswith("install them with: pip install 'decentralized-clusters[platform]'")
    )
    agent = _run([bin_dir / "dcluster-agent", "--version"], env, tmp_path)
    assert agent.returncode == 1 and "pip install 'decentralized-clusters[agent]'" in agent.stderr, agent.stderr
