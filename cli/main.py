"""`dcluster`: the command line; one function per subcommand, registered in SUBCOMMANDS."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import dcluster
from cli import clusters, demo, login, machine_keys, machines, quota, usage
from cli.platform import errors as platform_errors
from cli.platform import install, state
from dcl_core import database_url, domain
from dcluster import versions

if TYPE_CHECKING:
    from cli.platform.launcher import PlatformLauncher

logger = logging.getLogger(__name__)

# Failures a user can fix from the message alone: one line on stderr, exit 1, no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (platform_errors.PlatformError, dcluster.ClientError)


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="platform state directory (default: $DCLUSTER_STATE_DIR or ~/.dcluster)",
    )


def _launcher(args: argparse.Namespace, **kw) -> PlatformLauncher:
    # Imported here: the platform's modules need the [platform] extra, which a buyer's install lacks.
    install.require_platform(args.command)
    from cli.platform import launcher as platform_launcher

    return platform_launcher.PlatformLauncher(args.state_dir or state.default_state_dir(), **kw)


# --- up ---------------------------------------------------------------------------------


def _add_up(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("up", help="start the platform on this machine (Ray head, API, local provider agents)")
    _state_dir_arg(p)
    p.add_argument("--providers", type=int, default=0, help="local provider agents to start (default 0)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the API (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address the API binds to (default 127.0.0.1)")
    p.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="the one address the platform hands out (agents, sub-clusters' autoscalers, connection details, "
        "logins), e.g. https://platform.example.com:8000; https makes the API serve TLS, with a certificate "
        "authority of the platform's own unless --tls-cert is given (default: the last `up`'s, else the "
        "api_url in serve.yaml, else the local address)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, metavar="FILE", help="an operator's certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="its private key (PEM, mode 0600)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a plain-HTTP --public-url that other machines reach (passwords and tokens unencrypted)",
    )
    p.add_argument("--heartbeat-s", type=float, default=5.0, help="agents' heartbeat interval (default 5)")
    p.add_argument(
        "--agent-cpus", type=int, default=None, help="Local agents offer N logical CPUs each (default: detected)"
    )
    p.add_argument(
        "--agent-gpus", type=int, default=None, help="GPUs each local agent declares (default: what it detects)"
    )
    p.add_argument(
        "--agent-runtime",
        choices=domain.SANDBOX_RUNTIMES,
        default=None,
        help="Where local agents run leases (default: docker where a daemon answers, else bwrap; "
        "none runs buyers' code unsandboxed)",
    )
    p.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="PostgreSQL for the platform's state, e.g. postgresql://dcluster@db-host:5432/dcluster "
        "(password in ~/.pgpass or PGPASSFILE, not in the URL); default: SQLite in the state dir. "
        "Secrets are then kept in it, sealed with DCL_SECRET_KEY / DCL_SECRET_KEY_FILE (else a key "
        "made once in <state dir>/secret.key), and the control-plane actors may run on any node",
    )
    p.add_argument(
        "--api-replicas",
        type=int,
        default=None,
        metavar="N",
        help="with --database: API replicas, at most one a node, each serving the API port on its node "
        "(default 2; set it to the number of platform nodes)",
    )
    p.add_argument(
        "--redis",
        default=None,
        metavar="redis://HOST:PORT",
        help="GCS fault tolerance: the head keeps Ray's cluster tables in this Redis, so a head restarted "
        "with the same command keeps the detached actors, the Serve app and the other nodes",
    )
    p.add_argument(
        "--join",
        default=None,
        metavar="HOST:PORT",
        help="add this machine to a running platform as another node, given the head's GCS address "
        "(needs the head's ray_auth_token, and its secret key, in this state dir)",
    )
    return p


def up_settings(args: argparse.Namespace) -> dict:
    """PlatformSettings fields `up` sets beyond the Serve template's."""
    if args.database is None:
        return {}
    if not database_url.is_postgres_url(args.database):
        raise platform_errors.PlatformError(
            "--database takes a postgresql:// URL, e.g. postgresql://dcluster@db-host:5432/dcluster"
        )
    return {"database": args.database}


def cmd_up(args: argparse.Namespace) -> int:
    launcher = _launcher(
        args,
        port=args.port,
        host=args.host,
        providers=args.providers,
        heartbeat_s=args.heartbeat_s,
        agent_gpus=args.agent_gpus,
        agent_cpus=args.agent_cpus,
        agent_runtime=args.agent_runtime,
        settings=up_settings(args),
        redis=args.redis,
        join=args.join,
        api_replicas=args.api_replicas,
        public_url=args.public_url,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
    )
    result = launcher.up()
    print("\n".join(result.lines()))
    if result.timings_s:
        logger.info("timings: %s", ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()))
    return 0


# --- down -------------------------------------------------------------------------------


def _add_down(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("down", help="stop the platform and its local agents (keeps accounts, machines, data)")
    _state_dir_arg(p)
    return p


def cmd_down(args: argparse.Namespace) -> int:
    result = _launcher(args).down()
    if result.get("left_running"):
        raise platform_errors.PlatformError(result["message"])
    if not result.get("stopped"):
        print(result["message"])
        return 0
    print(f"platform stopped ({result['processes_stopped']} processes, {result['elapsed_s']:.1f} s)")
    return 0


# --- status -----------------------------------------------------------------------------


def _add_status(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("status", help="show the platform's processes, health, machines and clusters")
    _state_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print the full status as JSON")
    return p


def format_status(st: dict) -> list[str]:
    if st.get("status") == "absent":
        return [st["message"]]
    lines = [
        f"platform: {st['status']}  ({st['api_url']}, healthz {'ok' if st['healthz'] else 'failing'})",
        f"  public URL: {st['public_url']}",
    ]
    if st.get("tls_fingerprint"):
        lines.append(f"  TLS CA fingerprint: {st['tls_fingerprint']}")
    lines += [
        f"  state dir: {st['state_dir']}",
        f"  Ray GCS:   {st['ray_gcs_address']}  temp dir {st['temp_dir']}",
    ]
    if st.get("error"):
        lines.append(f"  last error: {st['error']}")
    for r in st["head_processes"]:
        lines.append(f"  {r['name']:<12} pid {r['pid']:<8} {'alive' if r['alive'] else 'dead'}")
    for a in st["agents"]:
        lines.append(
            f"  agent {a['index']} ({a['username']}) pid {a['pid']} {'alive' if a['alive'] else 'dead'}  log {a['log']}"
        )
    if "machines" in st:
        lines.append(f"  machines: {len(st['machines'])}")
        for m in st["machines"]:
            lines.append(
                f"    {m['id']}  {m['name']:<16} {m['provider']:<20} {m['status']:<8} "
                f"GPUs {(m.get('gpu_verification') or {}).get('status', '-')}"
            )
    elif st.get("machines_error"):
        lines.append(f"  machines: unavailable ({st['machines_error']})")
    if "clusters" in st:
        lines.append(f"  clusters: {len(st['clusters'])}")
        for c in st["clusters"]:
            lines.append(f"    {c.get('cluster_id') or c.get('id')}  {c.get('status')}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    st = _launcher(args).status()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        print("\n".join(format_status(st)))
    return 0


# --- wiring -----------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], int]

# name -> (add the subparser, run it). Later subcommands (demo, login, cluster ...) add a pair here.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], argparse.ArgumentParser], Handler]] = {
    "up": (_add_up, cmd_up),
    "down": (_add_down, cmd_down),
    "status": (_add_status, cmd_status),
    "demo": (demo.add_demo, demo.cmd_demo),
    "login": (login.add_login, login.cmd_login),
    "logout": (login.add_logout, login.cmd_logout),
    "cluster": (clusters.add_cluster, clusters.cmd_cluster),
    "usage": (usage.add_usage, usage.cmd_usage),
    "quota": (quota.add_quota, quota.cmd_quota),
    "machine": (machine_keys.add_machine, machine_keys.cmd_machine),
    "offers": (machines.add_offers, machines.cmd_offers),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcluster", description="GPU cluster marketplace on Ray")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=versions.describe("dcluster"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, handler in SUBCOMMANDS.values():
        add(sub).set_defaults(handler=handler)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except EXPECTED_ERRORS as exc:
        details = getattr(exc, "details", None)
        if details:
            print(details, file=sys.stderr)
        # The last line on stderr is the one-line message.
        print(f"dcluster {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dcluster {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
