"""Old home of the agent's entry point, kept for `dcluster-agent` scripts installed before the move to
worker.agent.cli (pyproject's entry point now names that); a fresh `pip install -e .` no longer needs it."""

from worker.agent.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
