"""dcluster-agent: the provider agent's command line (argument parsing, logging, signals)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
from pathlib import Path

import pydantic

from worker.agent import agent as agent_mod
from worker import client as api
from worker.agent import detect

logger = logging.getLogger(__name__)

PASSWORD_ENV = "DCLUSTER_AGENT_PASSWORD"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcluster-agent",
        description="Offer this machine on a decentralized-clusters platform. The password is read from "
                    f"--password-file or ${PASSWORD_ENV}, never from the command line (visible in ps).")
    p.add_argument("--platform-url", help="Base URL of the platform API, e.g. https://market.example.com")
    p.add_argument("--username", help="Provider account name")
    p.add_argument("--password-file", type=Path, help=f"File holding the password (else ${PASSWORD_ENV})")
    p.add_argument("--name", help="Display name of this machine (default: hostname)")
    p.add_argument("--state-dir", type=Path, default=None, help="Where machine.json lives (default ~/.dcluster-agent)")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="Declare N GPUs instead of detecting them with NVML (0: CPU-only)")
    p.add_argument("--gpu-model", default="Logical GPU", help="Model name of declared GPUs")
    p.add_argument("--gpu-memory-mb", type=int, default=0, help="Memory of each declared GPU, MiB")
    p.add_argument("--cpus", type=int, default=None, metavar="N",
                   help="Offer N logical CPUs instead of the detected count")
    p.add_argument("--price-per-gpu-hour", type=float, default=0.0, help="USD per GPU-hour")
    p.add_argument("--price-per-cpu-hour", type=float, default=0.0, help="USD per CPU-hour (CPU-only leases)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--detect-only", action="store_true", help="Print the detected machine as JSON and exit")
    return p


def read_password(password_file: Path | None) -> str | None:
    """The password from the file (first line) or the environment; None when neither is given."""
    if password_file is not None:
        mode = password_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s is readable by other users; chmod 600 it", password_file)
        lines = password_file.read_text().splitlines()
        return lines[0] if lines else ""
    return os.environ.get(PASSWORD_ENV)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # httpx logs every request at INFO: a heartbeat line every few seconds
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.gpus is not None and not 0 <= args.gpus <= detect.MAX_GPUS:
        parser.error(f"--gpus must be between 0 and {detect.MAX_GPUS}")

    if args.detect_only:
        spec = detect.detect_machine(args.gpus, args.gpu_model, args.gpu_memory_mb, declared_cpus=args.cpus)
        print(spec.model_dump_json(indent=2))
        return 0

    if not args.platform_url or not args.username:
        parser.error("--platform-url and --username are required (unless --detect-only)")
    try:
        password = read_password(args.password_file)
    except OSError as exc:
        parser.error(f"cannot read --password-file: {exc}")
    if not password:
        parser.error(f"no password: pass --password-file FILE or set ${PASSWORD_ENV}")

    fields = {"platform_url": args.platform_url, "username": args.username, "password": password,
              "name": args.name, "declared_gpus": args.gpus, "declared_gpu_model": args.gpu_model,
              "declared_gpu_memory_mb": args.gpu_memory_mb, "declared_cpus": args.cpus, "price_per_gpu_hour": args.price_per_gpu_hour,
              "price_per_cpu_hour": args.price_per_cpu_hour}
    if args.state_dir is not None:
        fields["state_dir"] = args.state_dir
    try:
        settings = agent_mod.AgentSettings(**fields)
    except pydantic.ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        parser.error(errors)  # pydantic's own text would echo the input, password included

    client = api.PlatformClient(settings.platform_url)
    try:
        agent = agent_mod.Agent(client, settings)
    except OSError as exc:
        logger.error("cannot use state dir %s: %s", settings.state_dir, exc)
        client.close()
        return 1

    def _on_signal(signum, _frame):
        logger.info("received %s; leaving the platform", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        agent.run()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
