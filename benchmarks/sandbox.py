"""Figure: what the lease sandbox adds to time to a usable cluster and to release.

One platform per runtime (agents with `--runtime none`, then bwrap, then docker where a daemon
answers), the same create → usable → delete → released cycles on each (1 head + 2 workers); the
unsandboxed runtime is the baseline of the same run. Runtimes alternate within each repetition
would need three platforms up at once on a 2-core machine: they run one after another instead.
"""

from __future__ import annotations

from benchmarks import cluster_start, common, platform_session
from worker.agent import sandbox

NAME = "sandbox"


def runtimes() -> list[str]:
    return ["none", "bwrap"] + (["docker"] if sandbox.docker_answers() else [])


def measure(runtime: str, reps: int) -> list[dict]:
    session = platform_session.PlatformSession(agent_runtime=runtime, idle_s=1.0).start()
    try:
        for i in range(reps):
            common.log(f"{NAME}: --runtime {runtime}, cycle {i + 1}/{reps}")
            cycle = session.run_cycle(num_workers=cluster_start.NUM_WORKERS)
            common.log(f"{NAME}:   usable in {cycle['usable_s']:.1f} s; released in {cycle['release_s']:.1f} s")
        return session.cycles[-reps:]
    finally:
        session.close()


def run(ctx) -> list[common.Row]:
    results = {rt: measure(rt, ctx.reps) for rt in runtimes()}
    base = results["none"]
    base_usable = common.median([c["usable_s"] for c in base])
    base_release = common.median([c["release_s"] for c in base])
    rows = []
    for rt, cycles in results.items():
        usable = common.median([c["usable_s"] for c in cycles])
        release = common.median([c["release_s"] for c in cycles])
        details = {
            "reps": len(cycles),
            "usable_s": [round(c["usable_s"], 2) for c in cycles],
            "release_s": [round(c["release_s"], 2) for c in cycles],
            "processes_gone_s": [round(c["processes_gone_s"], 2) for c in cycles],
        }
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"time to a usable cluster, --runtime {rt}",
                value=usable,
                unit="s",
                baseline=base_usable,
                ratio=common.ratio(usable, base_usable),
                target="-",
                met=None,
                details=details,
            )
        )
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"release, --runtime {rt}",
                value=release,
                unit="s",
                baseline=base_release,
                ratio=common.ratio(release, base_release),
                target="<= 5 s",
                met=None if release is None else release <= 5.0,
                details=details,
            )
        )
    return rows
