"""Which device nodes a lease with GPUs needs: its own /dev/nvidiaN and the driver's shared nodes, nothing else.

NVML and CUDA number GPUs by PCI bus id; the device node of a GPU is /dev/nvidia<minor>, and the
driver tells each GPU's minor in /proc/driver/nvidia/gpus/<bus id>/information. Both roots are
parameters so that tests check the mapping against fake device nodes in a temp dir.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

# Nodes every CUDA process needs, whichever GPUs it has (present only where the driver made them).
SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
CAPS_DIR = "nvidia-caps"
_MINOR_RE = re.compile(r"^Device Minor:\s*(\d+)\s*$", re.MULTILINE)
_GPU_NODE_RE = re.compile(r"^nvidia(\d+)$")


class GpuDeviceError(Exception):
    """A leased GPU has no device node on this machine."""


@dataclasses.dataclass(frozen=True)
class GpuDevices:
    """What to expose for a set of leased GPUs."""

    nodes: tuple[Path, ...]  # device nodes to bind, host paths
    proc_entries: tuple[Path, ...]  # /proc/driver/nvidia/gpus/<bus id> of the leased GPUs (may be empty)
    all_gpu_nodes: tuple[Path, ...]  # every /dev/nvidiaN of the machine (what must stay hidden)


def gpu_minors(proc_root: Path = Path("/proc")) -> list[tuple[str, int]]:
    """(bus id, minor) of every GPU the driver knows, in NVML/CUDA order (by bus id); [] without a driver."""
    gpus_dir = proc_root / "driver" / "nvidia" / "gpus"
    found = []
    try:
        entries = sorted(gpus_dir.iterdir(), key=lambda p: p.name.lower())
    except OSError:
        return []
    for entry in entries:
        try:
            match = _MINOR_RE.search((entry / "information").read_text())
        except OSError:
            continue
        if match:
            found.append((entry.name, int(match.group(1))))
    return found


def devices_for(
    gpu_indices: Sequence[int], *, dev_root: Path = Path("/dev"), proc_root: Path = Path("/proc")
) -> GpuDevices:
    """The device nodes of the leased GPUs (by NVML index) plus the shared ones that exist.

    Without the driver's /proc entries (no driver, declared logical GPUs), index N is /dev/nvidiaN.
    A leased GPU without a node is an error: the lease would silently run without it.
    """
    dev_root, proc_root = Path(dev_root), Path(proc_root)
    all_nodes = tuple(
        sorted(
            (p for p in _listdir(dev_root) if _GPU_NODE_RE.match(p.name)),
            key=lambda p: int(_GPU_NODE_RE.match(p.name).group(1)),
        )
    )
    if not gpu_indices:
        return GpuDevices(nodes=(), proc_entries=(), all_gpu_nodes=all_nodes)
    minors = gpu_minors(proc_root)
    nodes: list[Path] = []
    entries: list[Path] = []
    for index in gpu_indices:
        if minors:
            if not 0 <= index < len(minors):
                raise GpuDeviceError(f"GPU {index} is not on this machine (the driver lists {len(minors)})")
            bus_id, minor = minors[index]
            entries.append(proc_root / "driver" / "nvidia" / "gpus" / bus_id)
        else:
            minor = index
        node = dev_root / f"nvidia{minor}"
        if not node.exists():
            raise GpuDeviceError(f"GPU {index} has no device node {node}; is the NVIDIA driver loaded?")
        nodes.append(node)
    shared = [dev_root / name for name in SHARED_NODES if (dev_root / name).exists()]
    caps = dev_root / CAPS_DIR
    if caps.is_dir():
        shared.append(caps)
    return GpuDevices(nodes=tuple(nodes + shared), proc_entries=tuple(entries), all_gpu_nodes=all_nodes)


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []
