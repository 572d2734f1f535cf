"""What every figure shares: result rows, statistics, the machine's description, the table, process sampling."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from dcl_core import polling

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
MIB = 1024**2


# --- results ----------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of the table: a measured value, its baseline from the same run, and its target."""

    figure: str
    metric: str
    value: float | None = None
    unit: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None  # None: no target, or not measurable
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def error_row(figure: str, exc: BaseException) -> Row:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return Row(figure=figure, metric="(error)", error=f"{type(exc).__name__}: {text}")


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


# --- statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """n, min, p50, p90, p99, max, mean of a sample (None where empty)."""
    if not values:
        return {"n": 0}
    r = lambda v: None if v is None else round(v, digits)  # noqa: E731
    return {
        "n": len(values),
        "min": r(min(values)),
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)),
        "mean": r(sum(values) / len(values)),
    }


# --- waiting ----------------------------------------------------------------------------


class Timeout(Exception):
    pass


def wait_for(
    predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.1, what: str = "condition"
) -> Any:
    """Polls until predicate() is truthy and returns its value (dcl_core.polling; the condition may raise while
    things settle)."""
    try:
        return polling.poll(predicate, timeout_s=timeout_s, interval_s=interval_s, what=what, retry_errors=True)
    except polling.TimedOut as exc:
        raise Timeout(str(exc)) from None


# --- the machine ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def other_ray_nodes() -> int:
    """GCS servers running on this machine when the run starts (noise from other clusters, not ours)."""
    count = 0
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == "gcs_server":
            count += 1
    return count


def machine_info() -> dict[str, Any]:
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    vm = psutil.virtual_memory()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "ram_gib": round(vm.total / GIB, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ray": ray_version,
        "git_commit": _git_commit(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "other_ray_nodes_at_start": other_ray_nodes(),
    }


# --- process resources ------------------------------------------------------------------


def memory_of(processes: Iterable[psutil.Process], *, pss: bool = True) -> dict[str, float]:
    """Summed RSS (and PSS, which splits shared pages fairly) in MiB, and the process count."""
    rss = pss_total = 0
    count = 0
    for proc in processes:
        try:
            if pss:
                info = proc.memory_full_info()
                pss_total += getattr(info, "pss", 0)
                rss += info.rss
            else:
                rss += proc.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    out = {"processes": count, "rss_mib": round(rss / MIB, 1)}
    if pss:
        out["pss_mib"] = round(pss_total / MIB, 1)
    return out


class ResourceSampler:
    """Samples the CPU use and RSS of a changing set of processes in a background thread.

    `find` returns the processes (re-run every `refresh_s`, since listing them by tag scans /proc);
    CPU is the growth of their user+system time per wall second (100 = one core busy).
    """

    def __init__(self, find: Callable[[], list[psutil.Process]], *, interval_s: float = 1.0, refresh_s: float = 5.0):
        self._find = find
        self._interval_s = interval_s
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_percent: list[float] = []
        self.rss_mib: list[float] = []
        self.cpu_s_by_process: dict[str, float] = collections.defaultdict(float)  # where the CPU went

    def __enter__(self) -> ResourceSampler:
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    @staticmethod
    def _cpu_times(procs: list[psutil.Process]) -> dict[int, float]:
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass
        return out

    @staticmethod
    def _labels(procs: list[psutil.Process]) -> dict[int, str]:
        """pid → what the process is (Ray sets a worker's title to its actor, e.g. ray::ServeReplica:...)."""
        out = {}
        for p in procs:
            try:
                cmd = p.cmdline()
                out[p.pid] = (Path(cmd[0]).name if cmd else p.name())[:60]
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass
        return out

    def _loop(self) -> None:
        procs = self._find()
        labels = self._labels(procs)
        refreshed = time.monotonic()
        before, t_before = self._cpu_times(procs), time.monotonic()
        while not self._stop.wait(self._interval_s):
            now = time.monotonic()
            after = self._cpu_times(procs)
            used = 0.0
            for pid in after.keys() & before.keys():
                used += after[pid] - before[pid]
                self.cpu_s_by_process[labels.get(pid, "?")] += after[pid] - before[pid]
            self.cpu_percent.append(100.0 * used / max(now - t_before, 1e-6))
            self.rss_mib.append(memory_of(procs, pss=False)["rss_mib"])
            if now - refreshed >= self._refresh_s:
                procs, refreshed = self._find(), now
                labels = self._labels(procs)
                after = self._cpu_times(procs)
            before, t_before = after, now

    def report(self) -> dict[str, Any]:
        cpu, rss = self.cpu_percent, self.rss_mib
        return {
            "samples": len(cpu),
            "cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_percent_p90": round(percentile(cpu, 90), 1) if cpu else None,
            "rss_mib_mean": round(sum(rss) / len(rss), 1) if rss else None,
            "rss_mib_max": round(max(rss), 1) if rss else None,
            "cpu_s_by_process": {
                k: round(v, 2) for k, v in sorted(self.cpu_s_by_process.items(), key=lambda kv: -kv[1]) if v >= 0.01
            },
        }


# --- output -----------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}g}" if magnitude < 0.01 else f"{value:.2f}"
    return str(value)


def table(rows: Sequence[Row]) -> str:
    """A fixed-width text table (also valid Markdown)."""
    header = ["figure", "metric", "value", "baseline", "ratio", "target", "met"]
    lines = []
    for r in rows:
        if r.error:
            lines.append([r.figure, r.metric, "ERROR", "", "", r.target, r.error])
            continue
        value = f"{fmt(r.value)} {r.unit}".strip()
        baseline = f"{fmt(r.baseline)} {r.unit}".strip() if r.baseline is not None else "-"
        rat = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(
            [r.figure, r.metric, value, baseline, rat, r.target or "-", fmt(r.met) if r.met is not None else "-"]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

    def render(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [render(line) for line in lines]
    return "\n".join(out)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
