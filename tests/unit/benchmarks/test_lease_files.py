"""benchmarks.lease_files runs its quick form and reports both rows with their baselines (no sandbox, no Ray)."""

import argparse

from benchmarks import lease_files


def test_the_quick_figure_reports_both_costs_against_plain_reads(tmp_path):
    ctx = argparse.Namespace(quick=True, workdir=tmp_path)
    rows = lease_files.run(ctx)
    assert [r.figure for r in rows] == ["lease_files", "lease_files"]
    for row in rows:
        assert row.error is None and row.value > 0 and row.baseline > 0 and row.ratio > 0
        assert row.met is not None
