"""The Ray port layout: every port of one Ray node, explicit so several clusters share a machine (which
ports are free is I/O: `worker.procs.allocate_ray_ports` picks them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

WORKER_PORT_RANGE = 200


@dataclasses.dataclass(frozen=True)
class RayPorts:
    """Every port a Ray head listens on, explicit so clusters on one machine never collide."""

    gcs: int
    dashboard: int
    client_server: int
    node_manager: int
    object_manager: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int
    autoscaler_metric: int
    dashboard_metric: int
    min_worker: int
    max_worker: int

    @classmethod
    def single_port_names(cls) -> list[str]:
        """The fields that are one port each (every field but the worker range)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("min_worker", "max_worker")]

    @classmethod
    def from_ports(cls, single: list[int], worker_start: int, worker_range: int = WORKER_PORT_RANGE) -> RayPorts:
        """single: one port per single_port_names(), in that order; workers use worker_start.. (worker_range ports)."""
        names = cls.single_port_names()
        if len(single) != len(names):
            raise ValueError(f"{len(names)} single ports needed, {len(single)} given")
        return cls(
            **dict(zip(names, single, strict=True)), min_worker=worker_start, max_worker=worker_start + worker_range - 1
        )

    def listening(self) -> list[int]:
        """The single ports (not the worker range)."""
        return [v for k, v in dataclasses.asdict(self).items() if k not in ("min_worker", "max_worker")]

    def all_ports(self) -> set[int]:
        return set(self.listening()) | set(range(self.min_worker, self.max_worker + 1))

    def start_flags(self, *, head: bool, temp_dir: Path) -> list[str]:
        """`ray start` flags that pin every port of this node and its temp dir."""
        flags = ["--temp-dir", str(temp_dir)]
        if head:
            flags += [
                "--port",
                str(self.gcs),
                "--dashboard-port",
                str(self.dashboard),
                "--ray-client-server-port",
                str(self.client_server),
            ]
        flags += [
            "--node-manager-port",
            str(self.node_manager),
            "--object-manager-port",
            str(self.object_manager),
            "--dashboard-agent-listen-port",
            str(self.dashboard_agent_listen),
            "--dashboard-agent-grpc-port",
            str(self.dashboard_agent_grpc),
            "--runtime-env-agent-port",
            str(self.runtime_env_agent),
            "--metrics-export-port",
            str(self.metrics_export),
            "--min-worker-port",
            str(self.min_worker),
            "--max-worker-port",
            str(self.max_worker),
        ]
        return flags

    def env(self) -> dict[str, str]:
        """Ports Ray reads from the environment only (fixed defaults otherwise, which collide)."""
        return {
            "AUTOSCALER_METRIC_PORT": str(self.autoscaler_metric),
            "DASHBOARD_METRIC_PORT": str(self.dashboard_metric),
        }

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> RayPorts:
        return cls(**data)
