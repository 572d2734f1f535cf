"""Buyer clusters: the manager, its buyer and node-provider APIs, lifecycle, joins, expiry, quotas, usage and logs."""
