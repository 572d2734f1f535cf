"""`dcluster quota`: an account's limits and what it uses of them; admins set them (`dcluster quota set`)."""

from __future__ import annotations

import argparse

from cli import exits, output, session

LIMIT_FLAGS = {
    "max_clusters": "--max-clusters",
    "max_gpus": "--max-gpus",
    "max_cpus": "--max-cpus",
    "max_gpu_hours": "--max-gpu-hours",
}
_USED = {"max_clusters": "clusters", "max_gpus": "gpus", "max_cpus": "cpus", "max_gpu_hours": "gpu_hours"}


def quota_table(quota: dict) -> str:
    rows = []
    for name in LIMIT_FLAGS:
        source = "set by an admin" if quota["overrides"].get(name) is not None else "platform default"
        rows.append([name, f"{quota['used'][_USED[name]]:g}", f"{quota['limits'][name]:g}", source])
    days = quota["limits"]["period_s"] / 86_400
    return f"account {quota['username']} (id {quota['account_id']}); GPU-hours per {days:g} days\n" + output.table(
        ["limit", "used", "limit", "from"], rows
    )


def _quota_path(account_id: int) -> str:
    return f"/v1/accounts/{int(account_id)}/quota"


@exits.guarded()
def cmd_quota(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client:
        account_id = args.account if args.account is not None else client.request("GET", "/v1/accounts/me")["id"]
        if args.quota_command == "set":
            body = {field: getattr(args, field) for field in LIMIT_FLAGS}  # left out: the platform's default
            quota = client.request("PUT", _quota_path(account_id), json=body)
        else:
            quota = client.request("GET", _quota_path(account_id))
    output.show(quota, args.json, quota_table)
    return exits.Exit.OK


def add_quota(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("quota", help="an account's limits (clusters, GPUs, CPUs, GPU-hours) and its use of them")
    qsub = p.add_subparsers(dest="quota_command", metavar="ACTION", required=True)
    show = qsub.add_parser("show", help="the limits and what is used (your own account unless --account)")
    show.add_argument("--account", type=int, metavar="ID", help="another account's id (admins)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    put = qsub.add_parser("set", help="admins: replace an account's limits; a limit left out takes the default")
    put.add_argument("--account", type=int, metavar="ID", required=True, help="the buyer account's id")
    put.add_argument("--max-clusters", type=int, metavar="N", help="live clusters at once")
    put.add_argument("--max-gpus", type=int, metavar="N", help="GPUs held at once")
    put.add_argument("--max-cpus", type=int, metavar="N", help="CPUs held at once (heads included)")
    put.add_argument("--max-gpu-hours", type=float, metavar="H", help="GPU-hours per period (30 days by default)")
    put.add_argument("--json", action="store_true", help="machine-readable output")
    return p
