"""`dcluster-agent doctor` on the real machine: each check's inputs gathered (worker.agent.doctor), one line each."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import dcluster
from worker.agent import detect, doctor, sandbox
from worker.agent import state as state_mod
from worker.agent.sandbox import cgroups


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lighthouse",
        default=None,
        metavar="HOST:PORT",
        help="The overlay's lighthouse to check (UDP); default: not configured",
    )


def _resolve(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)]


def _docker_runtimes() -> str:
    return doctor.run_quietly(["docker", "info", "--format", "{{json .Runtimes}}"])[1]


def platform_checks(url: str | None, client_factory: Callable[[str], dcluster.Client]) -> list[doctor.Check]:
    """Reachability and clock, from one real GET /healthz through the agent's own client (and its trust)."""
    if not url:
        return [
            doctor.fail("platform", "no --platform-url (nor DCLUSTER_PLATFORM_URL, nor platform_url in the config)"),
            doctor.warn("clock", "not compared: no platform to compare with"),
        ]
    before = datetime.now(UTC)
    answer: dcluster.Probe | Exception
    try:
        with client_factory(url) as client:
            answer = client.probe()
    except (dcluster.ClientError, ValueError) as exc:  # no answer, or not one this agent would trust
        answer = exc
    after = datetime.now(UTC)
    return [doctor.platform(url, answer), doctor.clock_skew(answer, before, after)]


def _kernel_surface_problem(runtime: str, as_root: bool) -> str | None:
    if runtime == "bwrap" and shutil.which("bwrap"):
        from worker.agent.sandbox import bwrap_version

        return bwrap_version.kernel_surface_problem(as_root=as_root)
    if runtime == "docker" and sandbox.docker_answers():
        from worker.agent.sandbox import docker

        return docker.seccomp_problem(
            doctor.run_quietly(["docker", "info", "--format", "{{json .SecurityOptions}}"])[1]
        )
    return None  # the runtime's own line says what is missing


def checks(args: argparse.Namespace, client_factory: Callable[[str], dcluster.Client], nvml: Any = None) -> list:
    runtime = args.runtime or sandbox.default_runtime()
    as_root = os.geteuid() == 0
    found: list[doctor.Check] = [
        doctor.sandbox_runtime(
            runtime,
            unsandboxed_ok=args.unsandboxed_ok,
            run=doctor.run_quietly,
            docker_answers=sandbox.docker_answers,
            as_root=as_root,
        ),
        doctor.kernel_surface(runtime, _kernel_surface_problem(runtime, as_root)),
        doctor.cgroup_limits(cgroups.ROOT, cgroups.available(), cgroups.CONTROLLERS),
        doctor.user(os.geteuid()),
    ]
    if args.gpus is not None:
        found.append(doctor.ok("GPUs", f"{args.gpus} declared with --gpus (NVML not read)"))
        gpu_count = args.gpus
    else:
        gpu_check, gpu_count = doctor.gpus(lambda: detect.nvml_gpus(nvml))
        found.append(gpu_check)
    found.append(doctor.container_toolkit(runtime, gpu_count, _docker_runtimes))
    state_dir = args.state_dir if args.state_dir is not None else state_mod.default_state_dir()
    where = doctor.existing_parent(state_dir)
    found.append(doctor.free_disk(where, shutil.disk_usage(where).free))
    found += platform_checks(args.platform_url, client_factory)
    found.append(doctor.lighthouse(args.lighthouse, _resolve))
    return found


def report(found: Sequence[doctor.Check], out: TextIO) -> int:
    for check in found:
        print(check.line(), file=out)
    failed = sum(c.level is doctor.Level.FAIL for c in found)
    print(f"{failed} FAIL, {sum(c.level is doctor.Level.WARN for c in found)} warn, {len(found)} checks", file=out)
    return doctor.exit_code(found)


def run(args: argparse.Namespace, client_factory: Callable[[str], dcluster.Client], nvml: Any = None) -> int:
    return report(checks(args, client_factory, nvml), sys.stdout)
