"""Old home of the agent's entry point, kept for `dcluster-agent` scripts installed before the move to
worker.agent (pyproject's entry point now names worker.agent.entry); a fresh `pip install -e .` no longer needs it."""

from worker.agent.entry import main

__all__ = ["main"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
