"""`dcluster machine list|keys|revoke-key`: a provider's machines (cli/machines.py) and per-machine agent keys."""

from __future__ import annotations

import argparse

from cli import exits, machines, output, session


def key_rows(keys: list[dict]) -> tuple[list[str], list[list]]:
    rows = [
        [
            k["id"],
            k["machine_id"],
            k["machine_name"],
            "active" if k["active"] else "revoked",
            output.clock_time(k["created_at"]),
            output.clock_time(k["revoked_at"]),
        ]
        for k in keys
    ]
    return ["key", "machine", "name", "state", "created", "revoked"], rows


@exits.guarded()
def cmd_machine(args: argparse.Namespace) -> int:
    if args.machine_command == "list":
        return machines.list_machines(args)
    if args.machine_command == "keys":
        return machines.show(args, "/v1/machine-keys", key_rows)
    with session.signed_in_client() as client:
        revoked = client.request("DELETE", f"/v1/machine-keys/{args.key_id}")
    if args.json:
        output.print_json(revoked)
    else:
        print(
            f"revoked {revoked['id']} of machine {revoked['machine_id']}: its agent gets 401 on its next "
            f"heartbeat and stops; run it with the provider's password to enroll the machine again"
        )
    return exits.Exit.OK


def add_machine(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("machine", help="providers: your machines (GPUs declared or verified) and their agent keys")
    msub = p.add_subparsers(dest="machine_command", metavar="ACTION", required=True)
    listing = msub.add_parser(
        "list",
        help="your machines (every machine, for admins): status, GPUs and their "
        "check (declared, verified, mismatch: what differs), reliability",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    keys = msub.add_parser("keys", help="every agent key of your machines, active and revoked (never a secret)")
    keys.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = msub.add_parser("revoke-key", help="revoke a machine's key: its agent stops at its next heartbeat")
    revoke.add_argument("key_id", metavar="KEY_ID", help="e.g. k-0123456789ab (from `dcluster machine keys`)")
    revoke.add_argument("--json", action="store_true", help="machine-readable output")
    return p
