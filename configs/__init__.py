"""Cluster-launcher templates for sub-clusters and their pydantic models."""
