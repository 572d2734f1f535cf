"""Figure 9: what reading a lease's files safely costs (worker.agent.lease_fs), against plain reads in the same run.

Two paths of the agent, each timed against the naive read it replaced (which followed links):
- a command's answer: the log made by the agent (`create_log`), read back through its own descriptor
  (`tail_of`) and checked still to be the one at its name (`same_file`), against `open(path, "w")` then
  `open(path).read()`;
- a closing lease's logs: `lease_logs.collect` over a Ray session dir of many files (every component
  opened beneath the lease's dir without following a link, each file checked as O_PATH first), against
  `os.scandir` and a plain open-seek-read of each file.
No sandbox and no platform: files in a scratch dir, so the figure is the file handling alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks import common
from worker.agent import lease_fs, lease_logs

NAME = "lease_files"
LOG_FILES = 200
TARGET_MS_PER_FILE = 1.0  # shipping a lease's logs at close: at most this per file
TARGET_US_PER_COMMAND = 1000.0  # a command in a lease takes ~3 ms end to end: its log handling stays well under


def _command_log_safe(lease: Path, seq: int) -> None:
    name = f"{seq:06d}-run.log"
    fd = lease_fs.create_log(lease, "logs", name, None, None)
    try:
        (lease / "logs" / name).write_text("ray start ok\n")
        lease_fs.tail_of(fd, 64 << 10)
        lease_fs.same_file(fd, lease, f"logs/{name}")
    finally:
        os.close(fd)


def _command_log_plain(lease: Path, seq: int) -> None:
    path = lease / "logs" / f"{seq:06d}-plain.log"
    with open(path, "w") as f:
        f.write("ray start ok\n")
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - (64 << 10)))
        f.read()


def _collect_plain(logs: Path) -> int:
    total = 0
    for entry in os.scandir(logs):
        with open(entry.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - lease_logs.MAX_BYTES_PER_FILE))
            total += len(f.read())
    return total


def _per_call_s(fn, reps: int) -> float:
    started = time.perf_counter()
    for i in range(reps):
        fn(i)
    return (time.perf_counter() - started) / reps


def run(ctx) -> list[common.Row]:
    reps = 200 if ctx.quick else 2000
    root = ctx.workdir / NAME
    lease = root / "leases" / "l-000000000009"
    (lease / "logs").mkdir(parents=True)
    plain = root / "plain"
    (plain / "logs").mkdir(parents=True)
    temp = root / "dcl-l-000000000009"
    logs = temp / "session_1" / "logs"
    logs.mkdir(parents=True)
    os.symlink(temp / "session_1", temp / lease_logs.SESSION_LINK)
    for i in range(LOG_FILES):
        (logs / f"worker-{i}.out").write_text(f"task {i} printed this\n" * 20)

    # Interleaved rounds, each side in a dir of its own: file creation here varies from round to round.
    safe_log, plain_log, safe_collect, plain_collect = [], [], [], []
    collect_reps = 5 if ctx.quick else 20
    for r in range(5):
        safe_log.append(_per_call_s(lambda i, r=r: _command_log_safe(lease, i + r * reps), reps))
        plain_log.append(_per_call_s(lambda i, r=r: _command_log_plain(plain, i + r * reps), reps))
        safe_collect.append(_per_call_s(lambda _i: lease_logs.collect(temp, lease / "nothing"), collect_reps))
        plain_collect.append(_per_call_s(lambda _i: _collect_plain(logs), collect_reps))
    safe_log, plain_log = common.median(safe_log), common.median(plain_log)
    safe_collect, plain_collect = common.median(safe_collect), common.median(plain_collect)
    per_file_ms = safe_collect * 1000 / LOG_FILES
    return [
        common.Row(
            figure=NAME,
            metric="a command's answer: made, read back, checked (per command)",
            value=round(safe_log * 1e6, 1),
            unit="µs",
            baseline=round(plain_log * 1e6, 1),
            ratio=common.ratio(safe_log, plain_log),
            target=f"<= {TARGET_US_PER_COMMAND:g} µs",
            met=safe_log * 1e6 <= TARGET_US_PER_COMMAND,
            details={"reps": reps},
        ),
        common.Row(
            figure=NAME,
            metric=f"a closing lease's {LOG_FILES} Ray logs shipped (per file)",
            value=round(per_file_ms, 3),
            unit="ms",
            baseline=round(plain_collect * 1000 / LOG_FILES, 3),
            ratio=common.ratio(safe_collect, plain_collect),
            target=f"<= {TARGET_MS_PER_FILE:g} ms",
            met=per_file_ms <= TARGET_MS_PER_FILE,
            details={"files": LOG_FILES, "reps": collect_reps},
        ),
    ]
