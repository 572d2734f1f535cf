"""`dcluster cluster ...`: the buyer's commands on clusters, from create to delete, and their arguments."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import dcluster
from cli import dashboard_forward, durations, exits, output, session, terminal
from cli.cluster_watch import ClusterWatcher
from cli.exits import CliError, Exit

DEFAULT_WAIT_TIMEOUT_S = 600.0

# Request fields → the flags that set them, so that the platform's validation errors name the flag.
CREATE_FLAGS = {
    "num_workers": "--workers",
    "gpus_per_worker": "--gpus",
    "gpu_model": "--gpu-model",
    "cpus_per_worker": "--cpus",
    "duration_s": "--duration",
    "name": "--name",
    "max_price_per_gpu_hour": "--max-price-per-gpu-hour",
    "max_price_per_cpu_hour": "--max-price-per-cpu-hour",
    "min_reliability": "--min-reliability",
    "verified_gpus_only": "--verified-gpus-only",
    "ray_version": "--ray-version",
    "python_version": "--python-version",
}


_guarded = exits.guarded(CREATE_FLAGS)


def cluster_body(args: argparse.Namespace) -> dict:
    body: dict[str, Any] = {
        "num_workers": args.workers,
        "gpus_per_worker": args.gpus,
        "cpus_per_worker": args.cpus,
        "duration_s": args.duration,
        "backend": args.backend,
    }
    if args.gpu_model:
        body["gpu_model"] = args.gpu_model
    if args.name:
        body["name"] = args.name
    for field in (
        "max_price_per_gpu_hour",
        "max_price_per_cpu_hour",
        "min_reliability",
        "ray_version",
        "python_version",
    ):
        if getattr(args, field, None) is not None:
            body[field] = getattr(args, field)
    if getattr(args, "verified_gpus_only", False):
        body["verified_gpus_only"] = True
    return body


@_guarded
def cmd_create(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client:
        cluster = client.create_cluster(**cluster_body(args))
        cid = cluster["id"]
        if not args.wait:
            if args.json:
                output.print_json(cluster)
            else:
                print(output.cluster_summary(cluster, time.time()))
                output.progress(f"follow it with: dcluster cluster events {cid} --follow")
            return Exit.OK
        output.progress(f"cluster {cid} requested; waiting up to {args.timeout:.0f} s for it to run")
        with terminal.ClusterProgress(f"waiting for {cid} to run") as shown:
            watcher = ClusterWatcher(client, cid, shown.event, on_cluster=shown.cluster)
            cluster = watcher.wait_running(args.timeout)
        connection = client.cluster_connection(cid)
    if args.json:
        output.print_json({**cluster, "connection": connection})
    else:
        output.progress(output.cluster_summary(cluster, time.time()))  # a degraded one says why
        output.progress(f'its environment (for `eval "$(dcluster cluster connect {cid})"`):')
        print("\n".join(output.export_lines(connection["env"])))
    return Exit.OK


@_guarded
def cmd_list(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client:
        clusters = client.list_clusters()
    if args.json:
        output.print_json(clusters)
    elif clusters:
        terminal.print_table(output.CLUSTER_HEADERS, output.cluster_rows(clusters, time.time()))
    else:
        print("no clusters")
    return Exit.OK


@_guarded
def cmd_status(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client:
        cluster = client.get_cluster(args.cluster_id)
    if args.json:
        output.print_json(cluster)
    else:
        print(output.cluster_details(cluster, time.time()))
    return Exit.OK


@_guarded
def cmd_events(args: argparse.Namespace) -> int:
    def show(event: dict) -> None:
        if args.json and args.follow:
            output.print_json(event, compact=True)  # one object per line while following
        elif not args.json:
            print(output.event_line(event), flush=True)

    with session.signed_in_client() as client:
        watcher = ClusterWatcher(client, args.cluster_id, show)
        if not args.follow:
            watcher.drain_events()
            if args.json:
                output.print_json(watcher.events)
            return Exit.OK
        watcher.wait_ended(float("inf"))
        watcher.drain_events()
    return Exit.OK


@_guarded
def cmd_logs(args: argparse.Namespace) -> int:
    """The logs a cluster's nodes shipped as they were released: the index, one job's driver log, or one file."""
    with session.signed_in_client() as client:
        if args.job:
            text = client.cluster_job_log(args.cluster_id, args.job)
        elif args.file:
            text = client.cluster_log_file(args.cluster_id, args.file, node=args.node)
        else:
            files = client.cluster_logs(args.cluster_id)
            if args.json:
                output.print_json(files)
            elif not files:
                print(f"no logs kept for {args.cluster_id} (yet): each node ships its logs as it is released")
            else:
                terminal.print_table(
                    ["node", "role", "file", "size", "kept"],
                    [
                        [
                            f["lease_id"],
                            f["role"],
                            f["name"],
                            f["bytes"],
                            f"{f['kept_bytes']}{' (tail)' if f['truncated'] else ''}",
                        ]
                        for f in files
                    ],
                )
            return Exit.OK
    sys.stdout.write(text)
    return Exit.OK


@_guarded
def cmd_extend(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client:
        try:
            cluster = client.extend_cluster(args.cluster_id, args.duration)
        except dcluster.ApiError as exc:
            if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
                raise CliError(
                    "this platform cannot extend clusters yet (POST /v1/clusters/{id}/extend "
                    f"answered {exc.status_code} {exc.detail})"
                ) from None
            raise
    if args.json:
        output.print_json(cluster)
    else:
        print(
            f"cluster {cluster['id']} now expires at {output.clock_time(cluster['expires_at'])} "
            f"(in {output.human_duration(cluster['expires_at'] - time.time())})"
        )
    return Exit.OK


@_guarded
def cmd_delete(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client, terminal.ClusterProgress(f"deleting {args.cluster_id}") as shown:
        watcher = ClusterWatcher(client, args.cluster_id, shown.event, on_cluster=shown.cluster)
        if args.wait:
            watcher.skip_past_events()  # show the teardown, not the cluster's whole history
        cluster = client.delete_cluster(args.cluster_id)
        if args.wait and not output.is_terminal(cluster["status"]):
            shown.message(
                f"cluster {cluster['id']} is {cluster['status']}; waiting up to {args.timeout:.0f} s "
                f"for its nodes to be released"
            )
            cluster = watcher.wait_ended(args.timeout)
    if args.json:
        output.print_json(cluster)
    else:
        print(output.cluster_summary(cluster, time.time()))
    return Exit.OK


@_guarded
def cmd_connect(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client:
        connection = client.cluster_connection(args.cluster_id)
    if args.json:
        output.print_json(connection)
        return Exit.OK
    print("\n".join(output.export_lines(connection["env"])))
    if sys.stdout.isatty():
        output.progress(
            f'# load it: eval "$(dcluster cluster connect {args.cluster_id})"; '
            f"then: ray job submit --working-dir . -- python your_script.py"
        )
    return Exit.OK


@_guarded
def cmd_dashboard(args: argparse.Namespace) -> int:
    with session.signed_in_client() as client:
        connection = client.cluster_connection(args.cluster_id)
    urls = {k: connection[k] for k in ("dashboard_url", "dashboard_proxy_url", "metrics_proxy_url")}
    if args.forward is not None:
        signed_in = session.current_session()
        forward = dashboard_forward.DashboardForward(
            urls["dashboard_proxy_url"], signed_in.token, port=args.forward, trust=signed_in.trust()
        )
        output.progress(
            f"the Ray dashboard of {args.cluster_id}, through the platform: {forward.url} "
            "(GET only; Ctrl-C stops; valid while your sign-in is)"
        )
        try:
            forward.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            forward.close()
        return Exit.OK
    if args.json:
        output.print_json(urls)
        return Exit.OK
    print(f"Ray dashboard (on the head):   {urls['dashboard_url']}")
    print(
        "  with the cluster's Ray token: Authorization: Bearer $RAY_AUTH_TOKEN "
        f'(eval "$(dcluster cluster connect {args.cluster_id})"), or paste it where the dashboard asks'
    )
    print(f"through the platform (GET):    {urls['dashboard_proxy_url']}")
    print(f"Prometheus metrics (head):     {urls['metrics_proxy_url']}   (?node=l-... for a worker)")
    print("  both with your platform token: Authorization: Bearer <token from dcluster login>")
    return Exit.OK


# --- parsers ------------------------------------------------------------------------------------


def _wait_args(p: argparse.ArgumentParser, wait_help: str) -> None:
    p.add_argument("--wait", action="store_true", help=wait_help)
    p.add_argument(
        "--timeout",
        type=durations.duration_arg,
        default=DEFAULT_WAIT_TIMEOUT_S,
        help=f"how long --wait waits: seconds or 10m (default {DEFAULT_WAIT_TIMEOUT_S:.0f}; exit 8 past it)",
    )


def add_cluster(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "cluster", **exits.parser_kw("buyer clusters: create, list, status, events, extend, delete, connect, dashboard")
    )
    csub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    c = csub.add_parser("create", **exits.parser_kw("ask for a Ray cluster of N workers for a while"))
    c.add_argument("--workers", type=int, required=True, help="worker nodes (the head is extra)")
    c.add_argument("--gpus", type=int, default=0, help="GPUs on each worker (default 0)")
    c.add_argument("--gpu-model", help="exact GPU model, e.g. 'NVIDIA A100-SXM4-80GB' (default: any)")
    c.add_argument("--cpus", type=int, default=1, help="CPUs on each worker (default 1)")
    c.add_argument(
        "--duration",
        type=durations.duration_arg,
        default=3600,
        help="lifetime: 30m, 2h, 1h30m, 90s or seconds (default 1h)",
    )
    c.add_argument("--name", help="display name: 1-40 of [a-z0-9-]")
    c.add_argument("--backend", choices=("market", "aws"), default="market", help="where nodes run (default market)")
    c.add_argument(
        "--max-price-per-gpu-hour",
        type=float,
        metavar="USD",
        help="most a GPU worker may cost per GPU-hour, replacements included (default: any)",
    )
    c.add_argument(
        "--max-price-per-cpu-hour",
        type=float,
        metavar="USD",
        help="most a CPU-only node (the head, CPU workers) may cost per CPU-hour (default: any)",
    )
    c.add_argument(
        "--min-reliability",
        type=float,
        metavar="0-1",
        help="only machines at least this reliable (uptime x nodes ended well; offers show it)",
    )
    c.add_argument(
        "--verified-gpus-only",
        action="store_true",
        help="GPU workers only on machines whose GPUs a check lease verified (`dcluster offers` counts them)",
    )
    c.add_argument(
        "--ray-version",
        metavar="X.Y.Z",
        help="the Ray version every node runs, one the platform launches (default: the platform's own)",
    )
    c.add_argument(
        "--python-version",
        metavar="3.N",
        help="the Python minor version every node runs, e.g. 3.11, as your Ray client's (default: any)",
    )
    _wait_args(c, "show its events until it runs, then print its environment (`export` lines)")
    exits.json_arg(c)
    c.set_defaults(cluster_handler=cmd_create)

    ls = csub.add_parser("list", **exits.parser_kw("your clusters, as a table"))
    exits.json_arg(ls)
    ls.set_defaults(cluster_handler=cmd_list)

    for name, handler, text in (
        ("status", cmd_status, "one cluster: status, lifetime, nodes"),
        ("connect", cmd_connect, 'print `export` lines for the stock Ray CLI: eval "$(dcluster cluster connect ID)"'),
    ):
        q = csub.add_parser(name, **exits.parser_kw(text))
        q.add_argument("cluster_id", metavar="ID")
        exits.json_arg(q)
        q.set_defaults(cluster_handler=handler)

    db = csub.add_parser(
        "dashboard",
        **exits.parser_kw(
            "where its Ray dashboard and Prometheus metrics are, directly "
            "and through the platform; --forward: the dashboard on a local "
            "port"
        ),
    )
    db.add_argument("cluster_id", metavar="ID")
    db.add_argument(
        "--forward",
        type=int,
        metavar="PORT",
        nargs="?",
        const=0,
        help="serve the dashboard on 127.0.0.1:PORT through the platform, with your sign-in (no PORT: a free one)",
    )
    exits.json_arg(db)
    db.set_defaults(cluster_handler=cmd_dashboard)

    e = csub.add_parser("events", **exits.parser_kw("a cluster's events (--json --follow: one JSON object per line)"))
    e.add_argument("cluster_id", metavar="ID")
    e.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the cluster ends")
    exits.json_arg(e)
    e.set_defaults(cluster_handler=cmd_events)

    lg = csub.add_parser(
        "logs",
        **exits.parser_kw(
            "the logs its nodes shipped as they were released (also after the "
            "cluster ended): the list, a job's driver log, or one file"
        ),
    )
    lg.add_argument("cluster_id", metavar="ID")
    lg.add_argument("--job", metavar="JOB", help="a submitted job's driver output (the id `ray job submit` printed)")
    lg.add_argument("--file", metavar="NAME", help="one file of the list, e.g. ray/raylet.out")
    lg.add_argument("--node", metavar="NODE", help="with --file: the node (l-...) it came from")
    exits.json_arg(lg)
    lg.set_defaults(cluster_handler=cmd_logs)

    x = csub.add_parser("extend", **exits.parser_kw("add time to a cluster's lifetime"))
    x.add_argument("cluster_id", metavar="ID")
    x.add_argument(
        "--duration", type=durations.duration_arg, required=True, help="time to add: 30m, 2h, 90s or seconds"
    )
    exits.json_arg(x)
    x.set_defaults(cluster_handler=cmd_extend)

    d = csub.add_parser("delete", **exits.parser_kw("tear a cluster down (idempotent)"))
    d.add_argument("cluster_id", metavar="ID")
    _wait_args(d, "show its events until it has ended and its nodes are released")
    exits.json_arg(d)
    d.set_defaults(cluster_handler=cmd_delete)
    return p


def cmd_cluster(args: argparse.Namespace) -> int:
    return args.cluster_handler(args)
