"""Before and after in one run: the same figures of two trees, alternated rep by rep on one machine.

    python -m benchmarks.compare --base-tree ../base --only api_throughput head_limits [--reps 3] [--keep DIR]

The base tree is another checkout (e.g. `git worktree add ../base <commit>` and `make venv` there): each tree
runs its own `python -m benchmarks` with its own virtualenv, one rep at a time, base then this tree, so a busy
spell of the machine falls on both. Prints, per metric, the median of each side and after/before. Arguments
after `--` go to every `python -m benchmarks`; `--keep DIR` keeps each run's JSON (per-process CPU, samples).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _run(tree: Path, figures: list[str], out: Path, extra: list[str]) -> list[dict]:
    python = tree / ".venv" / "bin" / "python"
    command = [str(python), "-m", "benchmarks", "--only", *figures, "--reps", "1", "--out", str(out), *extra]
    subprocess.run(command, cwd=tree, check=False, stdout=subprocess.DEVNULL)
    if not out.exists():
        return []
    return [r for r in json.loads(out.read_text())["rows"] if r.get("value") is not None]


def medians(reps: list[list[dict]]) -> dict[tuple[str, str], tuple[float, str]]:
    """Each metric's median; a metric measured against a baseline of its own run (the platform against plain
    uvicorn) also as that ratio, which a busy spell of the machine moves less."""
    values: dict[tuple[str, str], list[float]] = {}
    units: dict[tuple[str, str], str] = {}
    for rows in reps:
        for r in rows:
            key = (r["figure"], r["metric"])
            values.setdefault(key, []).append(r["value"])
            units[key] = r.get("unit", "")
            if r.get("ratio") is not None:
                ratio_key = (r["figure"], r["metric"] + " (x own baseline)")
                values.setdefault(ratio_key, []).append(r["ratio"])
                units[ratio_key] = "x"
    return {k: (statistics.median(v), units[k]) for k, v in values.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-tree", type=Path, required=True, help="the other checkout, with its .venv")
    parser.add_argument("--only", nargs="+", required=True, help="figures to run (benchmarks --only)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--keep", type=Path, default=None, metavar="DIR", help="keep each run's JSON (details, samples) in DIR"
    )
    parser.add_argument("extra", nargs="*", help="more arguments for `python -m benchmarks` (after --)")
    args = parser.parse_args(argv)
    base_reps: list[list[dict]] = []
    this_reps: list[list[dict]] = []
    with tempfile.TemporaryDirectory(prefix="dcl-compare-") as scratch:
        runs = args.keep or Path(scratch)
        runs.mkdir(parents=True, exist_ok=True)
        for rep in range(args.reps):
            for label, tree, reps in (("base", args.base_tree.resolve(), base_reps), ("this", HERE, this_reps)):
                print(f"rep {rep + 1}/{args.reps}: {label} ({tree})", file=sys.stderr, flush=True)
                reps.append(_run(tree, args.only, runs / f"{label}-{rep}.json", args.extra))
    before, after = medians(base_reps), medians(this_reps)
    print(f"{'figure':<16} {'metric':<72} {'before':>12} {'after':>12} {'after/before':>12}")
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key, (None, "")), after.get(key, (None, ""))
        ratio = f"{a[0] / b[0]:.3f}" if a[0] is not None and b[0] else "-"
        show = [f"{x[0]:.4g} {x[1]}".strip() if x[0] is not None else "-" for x in (b, a)]
        print(f"{key[0]:<16} {key[1][:72]:<72} {show[0]:>12} {show[1]:>12} {ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
