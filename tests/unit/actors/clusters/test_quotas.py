"""actors.clusters.quotas: the pure quota check (limits, what is held, what a request adds)."""

import pytest

from actors.clusters import quotas
from dcl_core import errors, quota_limits
from dcl_core.cluster_spec import ClusterSpec

NOW = 1_000_000.0


def spec(workers=1, gpus=0, cpus=1, duration_s=3600):
    return ClusterSpec(num_workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus, duration_s=duration_s)


def test_defaults_are_generous_but_finite_and_overrides_win_where_set():
    d = quota_limits.QuotaLimits()
    assert (d.max_clusters, d.max_gpus, d.max_cpus, d.max_gpu_hours, d.period_s) == (10, 64, 1024, 1000.0, 30 * 86_400)
    got = quotas.effective(d, {"max_gpus": 8, "max_clusters": None, "updated_by": "admin"})
    assert got.max_gpus == 8 and got.max_clusters == 10 and got.period_s == d.period_s


def test_demand_and_holding_count_heads_lifetimes_and_metered_use():
    s = spec(workers=2, gpus=4, cpus=3, duration_s=7200)
    assert quotas.cluster_demand(s) == quotas.Amounts(1, 8, 7, 16.0)
    assert quotas.extension_demand(s, 1800) == quotas.Amounts(gpu_hours=4.0)
    # One live cluster with an hour left, and 2 GPU-hours metered in the period.
    held = quotas.holding([(s, NOW + 3600)], metered_gpu_seconds=2 * 3600, now=NOW)
    assert held == quotas.Amounts(1, 8, 7, 2.0 + 8.0)
    # An overdue deadline reserves nothing more.
    assert quotas.holding([(s, NOW - 5)], 0, NOW).gpu_hours == 0


@pytest.mark.parametrize(
    "limits, held, demand, name",
    [
        (
            quota_limits.QuotaLimits(max_clusters=2),
            quotas.Amounts(clusters=2),
            quotas.Amounts(clusters=1),
            "max_clusters",
        ),
        (quota_limits.QuotaLimits(max_gpus=8), quotas.Amounts(1, 6), quotas.Amounts(1, 4), "max_gpus"),
        (quota_limits.QuotaLimits(max_cpus=4), quotas.Amounts(cpus=2), quotas.Amounts(1, 0, 3), "max_cpus"),
        (
            quota_limits.QuotaLimits(max_gpu_hours=10),
            quotas.Amounts(gpu_hours=9.5),
            quotas.Amounts(gpu_hours=1),
            "max_gpu_hours",
        ),
    ],
)
def test_the_limit_that_is_hit_is_named_with_a_403(limits, held, demand, name):
    with pytest.raises(errors.Forbidden, match=f"quota {name} exceeded") as caught:
        quotas.check(limits, held, demand, account="alice")
    assert caught.value.http_status == 403 and caught.value.fields["limit"] == name
    assert "alice" in caught.value.message and "PUT /v1/accounts/{id}/quota" in caught.value.message


def test_exactly_at_the_limit_passes_and_a_zero_demand_never_fails():
    limits = quota_limits.QuotaLimits(max_clusters=2, max_gpus=8, max_cpus=4, max_gpu_hours=10)
    quotas.check(limits, quotas.Amounts(1, 4, 2, 5.0), quotas.Amounts(1, 4, 2, 5.0), account="a")
    # Over a limit already (an admin lowered it): asking for none of it is still fine.
    quotas.check(limits, quotas.Amounts(5, 20, 9, 50.0), quotas.Amounts(), account="a")
    with pytest.raises(errors.Forbidden, match="max_gpu_hours"):
        quotas.check(limits, quotas.Amounts(5, 20, 9, 50.0), quotas.Amounts(gpu_hours=0.5), account="a")


def test_overrides_are_validated():
    with pytest.raises(ValueError):
        quota_limits.QuotaOverrides(max_gpus=-1)
    with pytest.raises(ValueError):
        quota_limits.QuotaOverrides(period_s=10)  # the period is the platform's, not per account
