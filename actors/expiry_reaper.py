"""Import shim: ExpiryReaper lives in actors/clusters/expiry_reaper.py.

Detached actors made before the control plane moved into packages name this module, and a GCS kept on
Redis restores them with it after an upgrade; remove it once no platform made before the move runs."""

from actors.clusters.expiry_reaper import ExpiryReaper

__all__ = ["ExpiryReaper"]
