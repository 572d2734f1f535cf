"""`dcluster-agent leave`: stop offering this machine, closing every lease (worker/agent/stopping.py).

The running agent is asked (its leave signal): it closes its leases, tells the platform the machine
leaves, and exits 0 (a systemd unit with Restart=on-failure then stays stopped). With no agent running,
the leases a previous run left on this state dir are closed here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.agent import leases, stopping
from worker.agent import sandbox as sandbox_mod
from worker.agent.agent import LEASES_DIR
from worker.agent.sandbox import base as sandbox_base
from worker.agent.sandbox import unsandboxed


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--leave-timeout", type=float, default=180.0, metavar="S", help="How long to wait for the agent to leave"
    )


def run(args: argparse.Namespace, state_dir: Path) -> int:
    agent = stopping.running_agent(state_dir)
    if agent is not None:
        print(f"asking the agent (pid {agent.pid}) to close every lease and leave the platform")
        if stopping.ask_to_leave(agent, args.leave_timeout):
            print("the agent closed its leases, left the platform and exited")
            return 0
        print(f"the agent (pid {agent.pid}) still runs after {args.leave_timeout:g} s; see its log", file=sys.stderr)
        return 1
    try:
        name = args.runtime or sandbox_mod.default_runtime()
        runtime = sandbox_mod.make_runtime(name, gpu_dev_root=args.gpu_device_dir, docker_image=args.docker_image)
    except sandbox_base.SandboxError:
        runtime = unsandboxed.UnsandboxedRuntime()  # ends a lease's processes by their owner tag all the same
    runner = leases.LeaseRunner(Path(state_dir) / LEASES_DIR, node_ip="127.0.0.1", runtime=runtime)
    runner.recover()
    results = runner.close_all()
    failed = sorted(lease_id for lease_id, result in results.items() if not result.ok)
    print(
        f"no agent runs on {state_dir}: closed {len(results) - len(failed)} lease(s) left there"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + ". The platform counts the machine offline once its heartbeats stop."
    )
    return 1 if failed else 0
