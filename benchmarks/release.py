"""Figure 2: release time, DELETE → every process of the sub-cluster gone and its machines leasable again.

"Gone": no process tagged with any of the cluster's lease tags is alive (the tags every lease
process carries; a fresh scan confirms nothing new appeared). "Leasable": every node of the cluster
is closed (its lease no longer holds capacity), as GET /v1/clusters/{id} reports. Reuses the
clusters of figure 1 when it ran; otherwise runs its own create → delete cycles.
"""

from __future__ import annotations

from benchmarks import common

NAME = "release"
TARGET_S = 5.0


def run(ctx) -> list[common.Row]:
    session = ctx.platform()
    while len(session.cycles) < ctx.reps:
        common.log(f"{NAME}: cluster cycle {len(session.cycles) + 1}/{ctx.reps}")
        session.run_cycle(num_workers=2)
    cycles = session.cycles[-ctx.reps :]
    release = common.median([c["release_s"] for c in cycles])
    details = {
        "reps": len(cycles),
        "release_s": [round(c["release_s"], 2) for c in cycles],
        "processes_gone_s": [round(c["processes_gone_s"], 2) for c in cycles],
        "nodes_released_s": [round(c["nodes_released_s"], 2) for c in cycles],
        "status_terminated_s (includes the launcher's teardown)": [round(c["terminated_s"], 2) for c in cycles],
        "lease_processes_before_delete": [c["processes_before_delete"] for c in cycles],
        "delete_call_s": [round(c["delete_call_s"], 3) for c in cycles],
    }
    return [
        common.Row(
            figure=NAME,
            metric="DELETE → all processes gone, machines leasable",
            value=release,
            unit="s",
            target=f"<= {TARGET_S:g} s",
            met=None if release is None else release <= TARGET_S,
            details=details,
        )
    ]
