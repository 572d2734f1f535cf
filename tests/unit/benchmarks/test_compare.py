"""benchmarks.compare's medians: each metric's, and the ratio to its own run's baseline where it has one."""

from benchmarks import compare


def test_medians_of_values_and_of_ratios_to_their_own_baseline():
    reps = [
        [{"figure": "f", "metric": "m", "value": v, "unit": "req/s", "ratio": r}]
        for v, r in ((10.0, 0.5), (30.0, 0.7), (20.0, 0.6))
    ]
    reps.append([{"figure": "f", "metric": "plain", "value": 1.0, "unit": "s"}])
    assert compare.medians(reps) == {
        ("f", "m"): (20.0, "req/s"),
        ("f", "m (x own baseline)"): (0.6, "x"),
        ("f", "plain"): (1.0, "s"),
    }
