"""Import shim: ProviderRegistry lives in actors/machines/registry.py.

Detached actors made before the control plane moved into packages name this module, and a GCS kept on
Redis restores them with it after an upgrade; remove it once no platform made before the move runs."""

from actors.machines.registry import ProviderRegistry

__all__ = ["ProviderRegistry"]
