"""The load generator: `wrk` (compiled, one thread) driven by a generated Lua script.

A load generator in Python took a core of its own on this 2-core machine and hid half of the gap
it measured; wrk costs a few percent of a core at these rates (its CPU time is in every result).
Install it from the distribution: `apt-get install wrk` (Debian, Ubuntu), `brew install wrk`.

Two modes, to 127.0.0.1 only, bounded in time:

- closed: `connections` keep-alive connections, each sends its next request as soon as the last
  one is answered (throughput and latency at a fixed concurrency);
- open: the requests follow one schedule, `rate` per second in all; each connection takes the next
  slot when it is free (LuaJIT's clock_gettime through ffi). A server that falls behind shows as
  sends that start late (`schedule_lag`), besides the latency wrk measures from send to answer.

The spec's `requests` ({"method", "path", "headers", "body"}) are sent in turn.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path

from dcl_core import secret_files

INSTALL_HINT = "install wrk: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
MARK = "WRK_JSON "


class WrkMissing(RuntimeError):
    pass


def binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(f"the API benchmarks load the platform with wrk, which is not on PATH: {INSTALL_HINT}")
    return path


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for these (ASCII) values


def _lua_request(req: dict) -> str:
    body = req.get("body") or ""
    if not isinstance(body, str):
        body = json.dumps(body)
    headers = {"Connection": "keep-alive", **(req.get("headers") or {})}
    if body:
        headers.setdefault("Content-Type", "application/json")
    fields = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    body_lua = _lua_string(body) if body else "nil"
    return f"{{{_lua_string(req.get('method', 'GET'))}, {_lua_string(req['path'])}, {{{fields}}}, {body_lua}}}"


_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } dclb_timespec;
int clock_gettime(int clk_id, dclb_timespec *tp);
]]
local ts = ffi.new("dclb_timespec")
local function now_s()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local specs = {
%(requests)s
}
local interval = %(interval)r
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  reqs = {}
  for i, r in ipairs(specs) do reqs[i] = wrk.format(r[1], r[2], r[3], r[4]) end
  n = 0
  statuses = {}
  lag_max, late_10ms, late_100ms, late_1s = 0, 0, 0, 0
end

function request()
  n = n + 1
  return reqs[((n - 1) %% #reqs) + 1]
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
end

if interval > 0 then
  function delay()
    local t = now_s()
    if next_at == nil then next_at = t end
    next_at = next_at + interval
    local wait = next_at - t
    if wait >= 0 then return math.floor(wait * 1000) end
    local lag = -wait
    if lag > lag_max then lag_max = lag end
    if lag > 0.01 then late_10ms = late_10ms + 1 end
    if lag > 0.1 then late_100ms = late_100ms + 1 end
    if lag > 1 then late_1s = late_1s + 1 end
    return 0
  end
end

function done(summary, latency, requests)
  local st, lag = {}, {max_s = 0, late_10ms = 0, late_100ms = 0, late_1s = 0}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
    lag.max_s = math.max(lag.max_s, t:get("lag_max"))
    lag.late_10ms = lag.late_10ms + t:get("late_10ms")
    lag.late_100ms = lag.late_100ms + t:get("late_100ms")
    lag.late_1s = lag.late_1s + t:get("late_1s")
  end
  local parts = {}
  for k, v in pairs(st) do table.insert(parts, string.format('"%%s": %%d', k, v)) end
  local e = summary.errors
  io.write(string.format('%(mark)s{"duration_us": %%d, "requests": %%d, "statuses": {%%s}, ' ..
    '"errors": {"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}, ' ..
    '"latency_us": {"n": %%d, "mean": %%.1f, "max": %%d, "p50": %%d, "p90": %%d, "p99": %%d, "p999": %%d}, ' ..
    '"schedule_lag": {"max_ms": %%.1f, "late_10ms": %%d, "late_100ms": %%d, "late_1s": %%d}}\n',
    summary.duration, summary.requests, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    summary.requests, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    lag.max_s * 1000, lag.late_10ms, lag.late_100ms, lag.late_1s))
end
"""


def script(requests: list[dict], interval_s: float) -> str:
    return _SCRIPT % {
        "requests": ",\n".join(_lua_request(r) for r in requests),
        "interval": float(interval_s),
        "mark": MARK,
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 2)


def run(spec: dict, workdir: Path) -> dict:
    """Runs wrk on spec {"mode": "closed"|"open", "port", "connections", "duration_s", "requests", "rate"
    (open), "timeout_s"}; the result in the shape the figures read (ok_per_s, statuses, errors, latency
    in ms, loadgen_cpu_s: wrk's own CPU time)."""
    exe = binary()
    interval = 0.0
    if spec["mode"] == "open":
        # Each connection is one wrk connection; the one thread hands out the slots of the schedule.
        interval = 1.0 / spec["rate"]
    path = workdir / f"wrk-{abs(hash(json.dumps(spec, sort_keys=True))) % 10**8}.lua"
    secret_files.write_secret_file(path, script(spec["requests"], interval))  # it holds bearer tokens
    cmd = [
        exe,
        "-t1",
        f"-c{spec['connections']}",
        f"-d{int(round(spec['duration_s']))}s",
        f"--timeout={int(spec.get('timeout_s', 10))}s",
        "-s",
        str(path),
        f"http://127.0.0.1:{spec['port']}",
    ]
    try:
        cpu0 = _children_cpu_s()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=spec["duration_s"] + 60)
        cpu = _children_cpu_s() - cpu0
    finally:
        path.unlink(missing_ok=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith(MARK)]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({r.returncode}): {(r.stderr or r.stdout)[-500:]}")
    out = json.loads(lines[-1][len(MARK) :])
    seconds = out["duration_us"] / 1e6
    ok = out["statuses"].get("200", 0)
    lat = out["latency_us"]
    return {
        "mode": spec["mode"],
        "connections": spec["connections"],
        "duration_s": round(seconds, 2),
        "rate": spec.get("rate"),
        "requests": out["requests"],
        "ok_per_s": ok / seconds if seconds else 0.0,
        "statuses": out["statuses"],
        "errors": {k: v for k, v in out["errors"].items() if v},
        "latency": {
            "n": lat["n"],
            "mean_ms": _ms(lat["mean"]),
            "p50_ms": _ms(lat["p50"]),
            "p90_ms": _ms(lat["p90"]),
            "p99_ms": _ms(lat["p99"]),
            "p999_ms": _ms(lat["p999"]),
            "max_ms": _ms(lat["max"]),
        },
        "schedule_lag": out["schedule_lag"] if spec["mode"] == "open" else None,
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen": "wrk",
    }
