"""configs.labels: the platform's node labels; every value made for Ray passes Ray's own label check."""

from __future__ import annotations

import random
import string

import pytest
from ray._private import label_utils

from configs import labels


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"),
        ("Tesla V100-PCIE-16GB", "Tesla-V100-PCIE-16GB"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA-GeForce-RTX-4090"),
        ("Logical GPU", "Logical-GPU"),
        ("  (weird)  name!! ", "weird-name"),
        ("a_b.c", "a_b.c"),
        ("AMD Instinct MI300X / OAM", "AMD-Instinct-MI300X-OAM"),
        ("---", ""),
        ("", ""),
    ],
)
def test_ray_label_value(text, expected):
    assert labels.ray_label_value(text) == expected
    label_utils.validate_label_value(labels.ray_label_value(text))


def test_ray_label_value_is_always_valid_and_short():
    rng = random.Random(7)
    alphabet = string.printable + "éü€"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
        value = labels.ray_label_value(text)
        label_utils.validate_label_value(value)  # raises when invalid
        assert len(value) <= 63
    assert labels.ray_label_value("x" * 62 + "-y") == "x" * 62
