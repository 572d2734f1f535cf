"""The benchmark runner's platform options: which store and how many platform nodes a run measures."""

from __future__ import annotations

import pytest

from benchmarks import __main__ as runner
from benchmarks.platform_session import PlatformLayout


def test_default_is_the_platform_dcluster_up_starts():
    args = runner.parse_args([])
    assert (args.database, args.platform_nodes, args.machines, args.window) == ("sqlite", 1, None, None)
    assert PlatformLayout(args.database, args.platform_nodes) == PlatformLayout()
    assert str(PlatformLayout()) == "sqlite, 1 node"


def test_two_nodes_on_postgresql():
    args = runner.parse_args(
        ["--only", "scale", "--database", "postgresql", "--platform-nodes", "2", "--machines", "2000", "--window", "30"]
    )
    assert (args.database, args.platform_nodes, args.machines, args.window) == ("postgresql", 2, 2000, 30.0)
    assert str(PlatformLayout("postgresql", 2)) == "postgresql, 2 nodes"


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--platform-nodes", "2"], "needs PostgreSQL"),
        (["--platform-nodes", "0"], "at least 1"),
        (["--database", "mysql"], "invalid choice"),
        (["--machines", "0"], "--machines"),
        (["--window", "-1"], "--window"),
    ],
)
def test_bad_combinations_are_usage_errors_naming_the_problem(argv, problem, capsys):
    with pytest.raises(SystemExit) as exc:
        runner.parse_args(argv)
    assert exc.value.code == 2
    assert problem in capsys.readouterr().err


def test_layout_rejects_what_cannot_run():
    with pytest.raises(ValueError, match="SQLite file lives on the head"):
        PlatformLayout("sqlite", 3)
    with pytest.raises(ValueError, match="one of sqlite, postgresql"):
        PlatformLayout("postgres", 1)
