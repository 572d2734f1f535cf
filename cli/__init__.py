"""Command-line entry points: `dcluster` for operators and buyers."""
