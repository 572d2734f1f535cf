"""The benchmark runner: every figure against its baseline in the same run, a table on stdout, JSON on disk.

    python -m benchmarks [--quick] [--only NAME ...] [--reps N] [--out benchmarks/results/latest.json]
                         [--database {sqlite,postgresql}] [--platform-nodes N] [--machines N] [--window S]

Exits 0 whatever the figures show; a figure that fails is an error row, not an exception.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import (
    api_throughput,
    cluster_start,
    common,
    expiry,
    footprint,
    head_limits,
    lease_files,
    platform_session,
    release,
    sandbox,
    scale,
)

# Run order: the cluster cycles first (figures 1, 2 and 6 share them), the 10,000 machines last.
FIGURES = {
    m.NAME: m
    for m in (cluster_start, release, sandbox, footprint, expiry, api_throughput, scale, head_limits, lease_files)
}
DEFAULT_OUT = common.REPO_ROOT / "benchmarks" / "results" / "latest.json"


class Context:
    """What a figure gets: the options, a scratch dir, and the one platform of the run (started on first use)."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.quick = args.quick
        self.reps = args.reps
        self.layout = platform_session.PlatformLayout(database=args.database, nodes=args.platform_nodes)
        self.machines = args.machines  # None: the figure's own default
        self.window_s = args.window
        self.workdir = workdir
        self._session: platform_session.PlatformSession | None = None
        self._start_error: BaseException | None = None

    def platform(self) -> platform_session.PlatformSession:
        if self._start_error is not None:
            raise RuntimeError(f"the platform did not start: {self._start_error}")
        if self._session is None:
            session = platform_session.PlatformSession(
                providers=2, agent_cpus=8, heartbeat_s=5.0, idle_s=5.0 if self.quick else 10.0, layout=self.layout
            )
            self._session = session  # stopped by close() even if start() fails midway
            try:
                session.start()
            except BaseException as exc:
                self._start_error = exc
                raise
        return self._session

    def platform_info(self) -> dict:
        s = self._session
        return (
            {}
            if s is None
            else {
                "layout": str(self.layout),
                "api_url": s.url,
                "up_timings_s": s.up_timings,
                "idle_footprint": s.idle_footprint,
            }
        )

    def close(self) -> dict:
        if self._session is None:
            return {}
        return self._session.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 repetition, 500 simulated machines for 10 s, short load windows",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(FIGURES),
        metavar="NAME",
        help=f"run only these figures ({', '.join(FIGURES)})",
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3, --quick 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    p.add_argument(
        "--database",
        choices=platform_session.PlatformLayout.DATABASES,
        default="sqlite",
        help="the platform's store: sqlite (default, as `dcluster up`) or postgresql (a throwaway server "
        "this run starts from Debian's postgresql package)",
    )
    p.add_argument(
        "--platform-nodes",
        type=int,
        default=1,
        metavar="N",
        help="platform nodes on this machine: the head plus N-1 joined with --join, one API replica "
        "each (N > 1 needs --database postgresql)",
    )
    p.add_argument(
        "--machines",
        type=int,
        default=None,
        metavar="N",
        help="simulated machines for the scale figure (default 10,000, --quick 500)",
    )
    p.add_argument(
        "--window",
        type=float,
        default=None,
        metavar="S",
        help="seconds of heartbeats in the scale figure (default 60, --quick 10)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked: a bad combination is a usage error naming it, never a failed platform start."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if args.machines is not None and args.machines < 1:
        parser.error("--machines must be >= 1")
    if args.window is not None and args.window <= 0:
        parser.error("--window must be > 0 seconds")
    try:
        platform_session.PlatformLayout(database=args.database, nodes=args.platform_nodes)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cli").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    names = args.only or list(FIGURES)
    names = [n for n in FIGURES if n in names]
    workdir = Path(tempfile.mkdtemp(prefix="dclb-run-", dir="/tmp"))
    ctx = Context(args, workdir)
    started = time.time()
    machine = common.machine_info()
    rows: list[common.Row] = []
    report = {
        "machine": machine,
        "args": {
            "quick": args.quick,
            "reps": args.reps,
            "only": names,
            "database": args.database,
            "platform_nodes": args.platform_nodes,
            "machines": args.machines,
            "window_s": args.window,
        },
        "rows": [],
    }

    def save(final: bool = False) -> None:
        report["rows"] = [r.to_dict() for r in rows]
        report["elapsed_s"] = round(time.time() - started, 1)
        report["platform"] = ctx.platform_info()
        report["complete"] = final
        common.write_json(args.out, report)

    common.log(
        f"figures: {', '.join(names)}; reps {args.reps}{' (quick)' if args.quick else ''}; platform: {ctx.layout}; "
        f"{machine['cpu_model']}, {machine['logical_cpus']} CPUs, {machine['ram_gib']} GiB"
    )
    try:
        for name in names:
            common.log(f"=== {name}")
            t0 = time.monotonic()
            try:
                new = FIGURES[name].run(ctx)
            except KeyboardInterrupt:
                rows.append(common.Row(figure=name, metric="(interrupted)", error="interrupted"))
                raise
            except Exception as exc:
                logging.getLogger("benchmarks").exception("figure %s failed", name)
                new = [common.error_row(name, exc)]
            for row in new:
                row.details.setdefault("figure_elapsed_s", round(time.monotonic() - t0, 1))
            rows.extend(new)
            save()
    except KeyboardInterrupt:
        common.log("interrupted: cleaning up")
    finally:
        try:
            report["platform_down"] = ctx.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    save(final=True)
    m = machine
    print(
        f"\nMachine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['ram_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}, Ray {m['ray']}, commit {m['git_commit']}, {m['date_utc']}; "
        f"load avg at start {m['load_avg_at_start']}, other Ray nodes running {m['other_ray_nodes_at_start']}"
    )
    print(f"Median of {args.reps} repetition(s) where repeated; total {report['elapsed_s']:.0f} s. JSON: {args.out}\n")
    print(common.table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
