"""The CLI's terminal output: steps and a live status line on a terminal, plain lines and columns elsewhere."""

from __future__ import annotations

import io

from cli import terminal


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


CLUSTER = {"id": "c-0123456789ab", "status": "provisioning", "workers_joined": 1, "num_workers": 2}
EVENT = {"id": 3, "kind": "node_joined", "message": "worker l-1 joined Ray"}


def test_off_a_terminal_steps_are_plain_lines_and_nothing_is_redrawn():
    stream, now = io.StringIO(), iter([100.0, 112.5, 113.0])
    with terminal.ClusterProgress("waiting", stream=stream, clock=lambda: next(now)) as shown:
        shown.event(EVENT)
        shown.cluster(CLUSTER)
    assert stream.getvalue() == "  +  12.5s  node_joined    worker l-1 joined Ray\n"


def test_off_a_terminal_steps_go_to_stderr(capsys):
    now = iter([100.0, 112.5])
    with terminal.ClusterProgress("waiting", clock=lambda: next(now)) as shown:
        shown.event(EVENT)
    out, err = capsys.readouterr()
    assert out == "" and err == "  +  12.5s  node_joined    worker l-1 joined Ray\n"


def test_on_a_terminal_a_status_line_follows_the_cluster():
    stream, now = Tty(), iter([100.0, 105.0, 112.5, 113.0])
    with terminal.ClusterProgress("waiting for c-0123456789ab to run", stream=stream, clock=lambda: next(now)) as shown:
        shown.cluster(CLUSTER)
        shown.event(EVENT)
    text = " ".join(stream.getvalue().split())  # the status line may wrap at the terminal's width
    assert "node_joined worker l-1 joined Ray" in text
    assert "c-0123456789ab provisioning · 1/2 workers joined · 5 s" in text


def test_status_line_says_why_a_cluster_is_degraded():
    line = terminal.status_line({**CLUSTER, "status": "degraded", "reason": "machine m-1 lost"}, 61.2)
    assert line == "c-0123456789ab degraded · 1/2 workers joined · 61 s · machine m-1 lost"


def test_tables_are_rich_on_a_terminal_and_plain_columns_elsewhere():
    plain, tty = io.StringIO(), Tty()
    rows = [("c-1", "big", "running"), ("c-2", None, "pending")]
    terminal.print_table(("ID", "NAME", "STATUS"), rows, stream=plain)
    assert plain.getvalue().splitlines() == ["ID   NAME  STATUS", "c-1  big   running", "c-2        pending"]
    terminal.print_table(("ID", "NAME", "STATUS"), rows, stream=tty)
    text = tty.getvalue()
    assert "ID" in text and "c-2" in text and "─" in text
