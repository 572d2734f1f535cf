"""Figure 1: time to a usable cluster (POST → every worker joined and a job accepted), 1 head + 2 workers
on local agents, against bare `ray start` of the same three nodes (head, then both workers at once).

Repetitions alternate baseline and platform so that a slow spell of the machine hits both.

    python -m benchmarks.cluster_start --probe   # internal: reports when N nodes are ALIVE in a GCS
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import cluster_cycle, common
from worker import procs

NAME = "cluster_start"
TARGET_RATIO = 1.2
NUM_WORKERS = 2


def _probe_main() -> int:
    """Reads `<gcs address> <nodes>` from stdin, prints time.monotonic() once that many nodes are ALIVE."""
    from ray._raylet import GcsClient
    from ray.core.generated import gcs_pb2

    address, wanted = sys.stdin.readline().split()
    client = GcsClient(address=address)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            nodes = client.get_all_node_info(timeout=2)
            alive = sum(1 for info in nodes.values() if info.state == gcs_pb2.GcsNodeInfo.ALIVE)
            if alive >= int(wanted):
                print(f"{time.monotonic():.6f}", flush=True)
                return 0
        except Exception:  # the GCS is still coming up
            pass
        time.sleep(0.05)
    print("timeout", flush=True)
    return 1


def _bare_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no token auth, no other cluster
    env["HOME"] = str(home)  # never this user's ~/.ray/auth_token
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def bare_ray_start(workdir: Path, *, num_workers: int = NUM_WORKERS, with_job: bool = True) -> dict:
    """Starts a bare 1 + num_workers cluster (every port explicit, own temp dirs), times it, stops it."""
    tag = "dclb-bare-" + secrets.token_hex(4)
    root = workdir / tag[-8:]
    root.mkdir(parents=True)
    env = _bare_env(root / "home")
    (root / "home").mkdir()
    taken: set[int] = set()
    ports = []
    for _ in range(1 + num_workers):
        p = procs.allocate_ray_ports(exclude=tuple(sorted(taken)))
        taken |= p.all_ports()
        ports.append(p)
    head = ports[0]
    # The same node shapes as the market's sub-cluster: a head with no CPUs for tasks, 1-CPU workers.
    head_cmd = [
        cluster_cycle.RAY,
        "start",
        "--head",
        *head.start_flags(head=True, temp_dir=root / "n0"),
        "--num-cpus=0",
        "--num-gpus=0",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
    ]
    worker_cmds = [
        [
            cluster_cycle.RAY,
            "start",
            f"--address=127.0.0.1:{head.gcs}",
            *p.start_flags(head=False, temp_dir=root / f"n{i}"),
            "--num-cpus=1",
            "--disable-usage-stats",
        ]
        for i, p in enumerate(ports[1:], start=1)
    ]
    probe = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cluster_start", "--probe"],
        cwd=common.REPO_ROOT,
        env={**env, "PYTHONPATH": str(common.REPO_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)  # the probe imports Ray before the clock starts
    out: dict = {}
    try:
        t0 = time.monotonic()
        rc = procs.spawn(head_cmd, env={**env, **head.env()}, log_path=root / "head.log", owner_tag=tag).wait(120)
        if rc != 0:
            raise RuntimeError(f"bare head `ray start` failed ({rc}): {(root / 'head.log').read_text()[-300:]}")
        out["head_s"] = time.monotonic() - t0
        probe.stdin.write(f"127.0.0.1:{head.gcs} {1 + num_workers}\n")
        probe.stdin.flush()
        workers = [
            procs.spawn(cmd, env={**env, **p.env()}, log_path=root / f"worker{i}.log", owner_tag=tag)
            for i, (cmd, p) in enumerate(zip(worker_cmds, ports[1:], strict=True))
        ]
        for i, w in enumerate(workers):
            if w.wait(120) != 0:
                raise RuntimeError(f"bare worker `ray start` failed: {(root / f'worker{i}.log').read_text()[-300:]}")
        out["ray_start_returned_s"] = time.monotonic() - t0
        line = probe.stdout.readline().strip()
        if line == "timeout" or not line:
            raise RuntimeError("bare cluster: not every node ALIVE within 120 s")
        out["alive_s"] = float(line) - t0
        if with_job:
            job = cluster_cycle.submit_job({"RAY_ADDRESS": f"http://127.0.0.1:{head.dashboard}"}, root / "home")
            out["job_accepted_s"] = time.monotonic() - t0
            out["job_ok"] = job["ok"]
    finally:
        probe.kill()
        probe.wait()
        t_stop = time.monotonic()
        summary = procs.stop_owned(tag, grace_s=5.0)
        out["stop_s"] = time.monotonic() - t_stop
        out["stop_clean"] = summary.clean
        shutil.rmtree(root, ignore_errors=True)
    return out


def run(ctx) -> list[common.Row]:
    reps = ctx.reps
    session = ctx.platform()
    bare: list[dict] = []
    for i in range(reps):
        common.log(f"{NAME}: bare ray start, repetition {i + 1}/{reps}")
        bare.append(bare_ray_start(ctx.workdir))
        common.log(f"{NAME}:   3 nodes ALIVE in {bare[-1]['alive_s']:.1f} s")
        common.log(f"{NAME}: platform cluster, repetition {i + 1}/{reps}")
        cycle = session.run_cycle(num_workers=NUM_WORKERS, footprint=(i == 0))
        common.log(f"{NAME}:   usable in {cycle['usable_s']:.1f} s; released in {cycle['release_s']:.1f} s")
    cycles = session.cycles[-reps:]
    usable = common.median([c["usable_s"] for c in cycles])
    alive = common.median([b["alive_s"] for b in bare])
    joined = common.median([c["joined_at_s"] for c in cycles])
    bare_job = common.median([b["job_accepted_s"] for b in bare if b.get("job_ok")])
    r = common.ratio(usable, bare_job)
    r_joined = common.ratio(joined, alive)
    details = {
        "reps": reps,
        "platform_usable_s": [round(c["usable_s"], 2) for c in cycles],
        "platform_all_joined_s (server time of the last `ray start`)": [round(c["joined_at_s"], 2) for c in cycles],
        "platform_job_submit_s (the ray CLI alone)": [round(c["job_submit_s"], 2) for c in cycles],
        "bare_alive_s": [round(b["alive_s"], 2) for b in bare],
        "bare_head_s": [round(b["head_s"], 2) for b in bare],
        "bare_plus_job_accepted_s": [round(b["job_accepted_s"], 2) for b in bare if b.get("job_ok")],
        "ratio_joined_vs_bare_alive": None if r_joined is None else round(r_joined, 3),
        "ratio_usable_vs_bare_plus_job": None if r is None else round(r, 3),
        "platform_phases_s_median (from the cluster's events)": {
            k: common.median([c["phases_s"][k] for c in cycles if c.get("phases_s", {}).get(k) is not None])
            for k in cycles[0].get("phases_s", {})
        },
        "platform_events_first_rep": cycles[0]["events"],
    }
    # Both sides to the same point: nodes ALIVE and `ray job submit` accepted (the headline until 2026-12-01
    # divided the platform's usable time by bare's ALIVE time, charging the platform the job submit alone).
    return [
        common.Row(
            figure=NAME,
            metric="time to a usable cluster (1 head + 2 workers, job accepted; bare: the same)",
            value=usable,
            unit="s",
            baseline=bare_job,
            ratio=r,
            target=f"<= {TARGET_RATIO}x bare ray start",
            met=None if r is None else r <= TARGET_RATIO,
            details=details,
        ),
        common.Row(
            figure=NAME,
            metric="time to every node joined (platform: seen ALIVE by the platform; bare: ALIVE)",
            value=joined,
            unit="s",
            baseline=alive,
            ratio=r_joined,
            target=f"<= {TARGET_RATIO}x bare ray start",
            met=None if r_joined is None else r_joined <= TARGET_RATIO,
        ),
    ]


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        sys.exit(_probe_main())
    sys.exit("usage: python -m benchmarks.cluster_start --probe (internal); run `python -m benchmarks`")
