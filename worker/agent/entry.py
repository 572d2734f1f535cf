"""`dcluster-agent`'s entry point: where this install lacks the [agent] extra (a buyer's install is the CLI
alone), it stops at once naming the pip command instead of failing on an import."""

from __future__ import annotations

import sys

from dcl_core import extras


def main(argv: list[str] | None = None) -> int:
    absent = extras.missing("agent")
    if absent:
        print(
            f"dcluster-agent: error: this install lacks the provider agent's packages ({', '.join(absent)}); "
            f"install them with: {extras.install_command('agent')}",
            file=sys.stderr,
        )
        return 1
    from worker.agent import cli  # here: it imports what the [agent] extra provides

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
