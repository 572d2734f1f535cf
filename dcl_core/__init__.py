"""The bottom layer: what every part agrees on (ids, statuses and roles with their rules, the cluster
spec, machine models, the agent protocol, the Ray port layout, the API models, errors). No Ray, no
I/O, and nothing of ours is imported here: every other package may import it. The one exception to
"no I/O" is `secret_files`, the single writer of owner-only files (stdlib only)."""
