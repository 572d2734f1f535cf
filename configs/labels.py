"""The platform's Ray node labels that every backend renders, and Ray's rule for a label's value."""

from __future__ import annotations

import re

CLUSTER_LABEL = "dcluster.io/cluster"
GPU_LABEL = "dcluster.io/gpu"
MAX_LABEL_VALUE_LEN = 63
_NOT_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def ray_label_value(text: str) -> str:
    """A valid Ray node-label value made from text ("NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3").

    Ray's rule (ray/_private/label_utils.py, Kubernetes' syntax): at most 63 characters of
    [A-Za-z0-9_.-], beginning and ending with an alphanumeric; "" is also valid. Runs of other
    characters become one '-'; "" comes back when nothing alphanumeric is left.
    """
    value = _NOT_LABEL_CHARS.sub("-", text or "")
    value = re.sub(r"-{2,}", "-", value)
    value = _EDGE.sub("", value)
    return _EDGE.sub("", value[:MAX_LABEL_VALUE_LEN])
