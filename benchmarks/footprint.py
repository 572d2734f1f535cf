"""Figure 6: footprint. The platform's idle memory (every process it owns: Ray head, dashboard, Serve
proxy and replica, control-plane actors), the local agents apart, measured after `up` and 10 s idle;
then the memory each running sub-cluster node adds (the processes of its lease), and what the
platform itself grows by while that cluster runs.

RSS counts shared pages in every process that maps them, so a sum of RSS overstates; PSS splits
them fairly and is the honest total. Both are reported; the target is judged on RSS.
"""

from __future__ import annotations

from benchmarks import common

NAME = "footprint"
TARGET_MIB = 1536.0


def run(ctx) -> list[common.Row]:
    session = ctx.platform()
    idle = session.idle_footprint
    cycle = next((c for c in session.cycles if "nodes_memory" in c), None)
    if cycle is None:
        common.log(f"{NAME}: a 2-worker cluster for the per-node footprint")
        cycle = session.run_cycle(num_workers=2, footprint=True)
    nodes = cycle["nodes_memory"]
    heads = [n for n in nodes if n["role"] == "head"]
    workers = [n for n in nodes if n["role"] == "worker"]
    plat = idle["platform"]
    grown = {k: round(cycle["platform_with_cluster"][k] - plat[k], 1) for k in ("rss_mib", "pss_mib")}
    rows = [
        common.Row(
            figure=NAME,
            metric="platform idle RSS, all its processes (agents apart)",
            value=plat["rss_mib"],
            unit="MiB",
            target=f"<= {TARGET_MIB:,.0f} MiB",
            met=plat["rss_mib"] <= TARGET_MIB,
            details={
                "platform": plat,
                "agents": idle["agents"],
                "idle_s": session.idle_s,
                "up_timings_s": session.up_timings,
            },
        ),
        common.Row(
            figure=NAME,
            metric="platform idle PSS",
            value=plat["pss_mib"],
            unit="MiB",
            target=f"<= {TARGET_MIB:,.0f} MiB",
            met=plat["pss_mib"] <= TARGET_MIB,
        ),
        common.Row(
            figure=NAME,
            metric="local agent idle RSS (each)",
            value=idle["agents"]["rss_mib"] / max(1, session.providers),
            unit="MiB",
            details=idle["agents"],
        ),
    ]
    if heads:
        rows.append(
            common.Row(
                figure=NAME,
                metric="sub-cluster head node RSS (its lease's processes)",
                value=common.median([h["rss_mib"] for h in heads]),
                unit="MiB",
                details={"pss_mib": [h["pss_mib"] for h in heads], "processes": [h["processes"] for h in heads]},
            )
        )
    if workers:
        rows.append(
            common.Row(
                figure=NAME,
                metric="sub-cluster worker node RSS (per node)",
                value=common.median([w["rss_mib"] for w in workers]),
                unit="MiB",
                details={
                    "rss_mib": [w["rss_mib"] for w in workers],
                    "pss_mib": [w["pss_mib"] for w in workers],
                    "processes": [w["processes"] for w in workers],
                },
            )
        )
    n_nodes = max(1, len(nodes))
    rows.append(
        common.Row(
            figure=NAME,
            metric="platform growth per running node (RSS)",
            value=grown["rss_mib"] / n_nodes,
            unit="MiB",
            details={"platform_with_cluster": cycle["platform_with_cluster"], "growth": grown, "nodes": n_nodes},
        )
    )
    return rows
