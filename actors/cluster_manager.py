"""Import shim: ClusterManager lives in actors/clusters/cluster_manager.py.

Detached actors made before the control plane moved into packages name this module, and a GCS kept on
Redis restores them with it after an upgrade; remove it once no platform made before the move runs."""

from actors.clusters.cluster_manager import ClusterManager

__all__ = ["ClusterManager"]
