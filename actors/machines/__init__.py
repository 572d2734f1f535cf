"""Providers' machines: the registry (accounts, machines, heartbeats, work channel), placement on them, offers,
reputation and GPU checks."""
