"""A small HTTP/1.1 keep-alive load generator (asyncio, raw sockets), run as its own process.

Two modes, both to 127.0.0.1 only and bounded in time:

- closed: `connections` clients each send the next request as soon as the last answered
  (throughput and latency at a fixed concurrency, as wrk does);
- open: requests are scheduled at a fixed `rate` whatever the answers do (a fleet of agents
  heartbeating on their own clocks); at most `connections` are in flight, the rest wait in line,
  and one that waited longer than `max_wait_s` is dropped as its client would have timed out.
  Latency is measured from the scheduled time, so a server that falls behind shows it (no
  coordinated omission).

    python -m benchmarks.loadgen spec.json   # prints one JSON object with the results

The spec's `requests` are used in turn (request i is requests[i % len]); each is
{"method", "path", "headers", "body"}.
"""

from __future__ import annotations

import asyncio
import collections
import json
import resource
import sys
import time

CONNECT_TIMEOUT_S = 5.0
DRAIN_S = 5.0  # after the window: how long answers still in flight may take


def build_request(host: str, port: int, req: dict) -> bytes:
    body = req.get("body") or ""
    body_bytes = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"Host": f"{host}:{port}", "Connection": "keep-alive", **(req.get("headers") or {})}
    if body_bytes or req.get("method", "GET") in ("POST", "PUT", "PATCH"):
        headers.setdefault("Content-Type", "application/json")
        headers["Content-Length"] = str(len(body_bytes))
    head = f"{req.get('method', 'GET')} {req['path']} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body_bytes


async def read_response(reader: asyncio.StreamReader) -> int:
    """Reads one response (Content-Length or chunked body); returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    if close:
        raise ConnectionResetError("server closed the connection")
    return status


class Recorder:
    def __init__(self, window_start: float, window_end: float):
        self.window_start = window_start
        self.window_end = window_end
        self.latencies: list[float] = []  # seconds, of answers completed inside the window
        self.service: list[float] = []  # send → answer (open mode; = latencies in closed mode)
        self.statuses: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.completed_in_window = 0
        self.sent = 0

    def record(self, scheduled: float, sent: float, done: float, status: int) -> None:
        """Throughput counts answers that arrived inside the window; latency, requests scheduled in it."""
        ok = 200 <= status < 300
        if ok and self.window_start <= done <= self.window_end:
            self.completed_in_window += 1
        if self.window_start <= scheduled < self.window_end:
            self.statuses[status] += 1
            if ok:
                self.latencies.append(done - scheduled)
                self.service.append(done - sent)


class Connection:
    def __init__(self, host: str, port: int, rec: Recorder):
        self.host, self.port, self.rec = host, port, rec
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ensure(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, raw: bytes, scheduled: float) -> None:
        try:
            await self.ensure()
            sent = time.perf_counter()
            self.rec.sent += 1
            self.writer.write(raw)
            status = await read_response(self.reader)
            self.rec.record(scheduled, sent, time.perf_counter(), status)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:
            self.rec.errors[type(exc).__name__] += 1
            self.drop()
            await asyncio.sleep(0.05)


async def run_closed(spec: dict, raws: list[bytes]) -> Recorder:
    host, port = spec.get("host", "127.0.0.1"), spec["port"]
    start = time.perf_counter()
    rec = Recorder(start + spec.get("warmup_s", 1.0), start + spec.get("warmup_s", 1.0) + spec["duration_s"])

    async def client(k: int) -> None:
        conn = Connection(host, port, rec)
        i = k
        while time.perf_counter() < rec.window_end:
            now = time.perf_counter()
            await conn.send(raws[i % len(raws)], now)
            i += spec["connections"]
        conn.drop()

    await asyncio.gather(*(client(k) for k in range(spec["connections"])))
    return rec


async def run_open(spec: dict, raws: list[bytes]) -> tuple[Recorder, dict]:
    host, port, rate = spec.get("host", "127.0.0.1"), spec["port"], float(spec["rate"])
    max_backlog = int(spec.get("max_backlog", max(1000, rate * 30)))  # a memory bound only
    max_wait_s = spec.get("max_wait_s")  # a request that waited longer in line is dropped (its client gave up)
    start = time.perf_counter()
    warmup = spec.get("warmup_s", 1.0)
    rec = Recorder(start + warmup, start + warmup + spec["duration_s"])
    queue: asyncio.Queue = asyncio.Queue()
    extra = {"scheduled": 0, "dropped": 0, "gave_up": 0, "max_backlog_seen": 0}

    async def scheduler() -> None:
        i = 0
        while True:
            now = time.perf_counter()
            if now >= rec.window_end:
                return
            due = int((now - start) * rate) + 1
            while i < due:
                scheduled = start + i / rate
                extra["scheduled"] += scheduled >= rec.window_start
                if queue.qsize() >= max_backlog:
                    extra["dropped"] += scheduled >= rec.window_start
                else:
                    queue.put_nowait((scheduled, raws[i % len(raws)]))
                i += 1
            extra["max_backlog_seen"] = max(extra["max_backlog_seen"], queue.qsize())
            await asyncio.sleep(min(0.002, max(0.0, start + i / rate - time.perf_counter())))

    in_flight = 0

    async def worker() -> None:
        nonlocal in_flight
        conn = Connection(host, port, rec)
        try:
            while True:
                scheduled, raw = await queue.get()
                if max_wait_s is not None and time.perf_counter() - scheduled > max_wait_s:
                    extra["gave_up"] += rec.window_start <= scheduled < rec.window_end  # its client timed out
                    continue
                in_flight += 1
                try:
                    await conn.send(raw, scheduled)
                finally:
                    in_flight -= 1
        finally:
            conn.drop()

    workers = [asyncio.create_task(worker()) for _ in range(spec["connections"])]
    await scheduler()
    extra["not_sent_in_window"] = queue.qsize()
    while not queue.empty():  # what was never sent is late, not pending: leave it
        queue.get_nowait()
    deadline = time.perf_counter() + DRAIN_S
    while in_flight and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return rec, extra


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    data = sorted(values)

    def pct(q: float) -> float:
        pos = (len(data) - 1) * q / 100.0
        lo = int(pos)
        hi = min(lo + 1, len(data) - 1)
        return data[lo] + (data[hi] - data[lo]) * (pos - lo)

    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {"n": len(data), "p50_ms": ms(pct(50)), "p90_ms": ms(pct(90)), "p99_ms": ms(pct(99)),
            "max_ms": ms(data[-1]), "mean_ms": ms(sum(data) / len(data))}


def run(spec: dict) -> dict:
    try:
        import uvloop
        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    host, port = spec.get("host", "127.0.0.1"), spec["port"]
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("the load generator only sends to 127.0.0.1")
    raws = [build_request(host, port, r) for r in spec["requests"]]
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    extra: dict = {}
    if spec["mode"] == "closed":
        rec = asyncio.run(run_closed(spec, raws))
    else:
        rec, extra = asyncio.run(run_open(spec, raws))
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    window = rec.window_end - rec.window_start
    cpu_s = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {
        "mode": spec["mode"],
        "loop": loop_name,
        "connections": spec["connections"],
        "window_s": round(window, 3),
        "ok_per_s": round(rec.completed_in_window / window, 1),
        "ok": rec.completed_in_window,
        "statuses": {str(k): v for k, v in sorted(rec.statuses.items())},
        "errors": dict(rec.errors),
        "latency": _summary(rec.latencies),
        "service_latency": _summary(rec.service),
        "loadgen_cpu_s": round(cpu_s, 2),
        **({"target_rate": spec.get("rate"), **extra} if spec["mode"] == "open" else {}),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    print(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
