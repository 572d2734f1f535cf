"""Where a cluster's nodes run: one interface (backend.py), a package per backend (market/, aws/), the launcher."""
