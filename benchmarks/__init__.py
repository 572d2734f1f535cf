"""Benchmarks of the platform against its anchors (`python -m benchmarks`); they measure, they never fail CI."""
