"""`dcluster up --providers N` waiting for its local agents: an agent that exits ends the wait at once with its
own reason on the first line (a missing sandbox runtime used to cost the whole 60 s and a buried log tail)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from cli.platform import local_agents, log_tail, state
from cli.platform.errors import PlatformError

REASON = "dcluster-agent: error: bubblewrap (bwrap) is not installed: apt-get install bubblewrap"


class NoMachinesYet:
    """The platform's answer while no agent has registered."""

    def list_machines(self) -> list[dict]:
        return []


def _agent(layout: state.Layout, index: int, script: str) -> tuple[dict, subprocess.Popen]:
    log = layout.agent_log(index)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
    record = {
        "index": index,
        "name": f"local-{index}",
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
    }
    return record, proc


def test_an_agent_that_exits_ends_the_wait_at_once_with_its_reason_first(tmp_path):
    layout = state.Layout(tmp_path)
    running, sleeper = _agent(layout, 1, "import time; time.sleep(60)")
    exiting, failed = _agent(layout, 2, f"import sys; print('starting'); print({REASON!r}); sys.exit(2)")
    try:
        failed.wait(10)  # exited, not reaped by anyone else: still a zombie until the wait below
        started = time.monotonic()
        with pytest.raises(PlatformError) as refused:
            local_agents.wait_for_machines(
                NoMachinesYet(), layout, agents=[running, exiting], providers=2, since=time.time()
            )
        waited_s = time.monotonic() - started
    finally:
        sleeper.kill()
        sleeper.wait(5)
    first_line = str(refused.value).splitlines()[0]
    assert first_line == f"local agent 2 (local-2) exited: {REASON}"
    assert "starting" in refused.value.details and waited_s < 5, waited_s


def test_the_reason_is_the_last_error_line_else_the_last_line(tmp_path):
    log = tmp_path / "agent.log"
    log.write_text("INFO up\nERROR cannot use state dir /x: denied\nINFO stopping\n")
    assert log_tail.last_reason(log) == "ERROR cannot use state dir /x: denied"
    log.write_text("INFO up\nkilled\n\n")
    assert log_tail.last_reason(log) == "killed"
    assert log_tail.last_reason(tmp_path / "none.log") == "(no log at " + str(tmp_path / "none.log") + ")"
