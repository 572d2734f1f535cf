"""dcluster-agent: the provider agent's command line (argument parsing, logging, signals)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydantic

import dcluster
from dcl_core import domain
from dcluster import versions
from worker.agent import agent as agent_mod
from worker.agent import (
    config_file,
    detect,
    doctor_run,
    env_options,
    fake_nvml,
    leave_run,
    platform_trust,
    sandbox,
    service,
    stopping,
)
from worker.agent import state as state_mod
from worker.agent.sandbox import base as sandbox_base

logger = logging.getLogger(__name__)

PASSWORD_ENV = "DCLUSTER_AGENT_PASSWORD"
EXIT_KEY_REFUSED = 3  # the platform refused the machine's agent key: enroll it again with the password
EXIT_PROTOCOL = 4  # the platform speaks another protocol version (426): run the matching agent release


# Subcommands beside running the agent; each takes the agent's own options (and its config file).
DOCTOR = "doctor"
INSTALL_SERVICE = "install-service"
LEAVE = "leave"
COMMANDS = {
    DOCTOR: "check this machine and its way to the platform, one line per check; exit 1 on any FAIL",
    INSTALL_SERVICE: "write the systemd unit and the config file (from these options), then enable and start it",
    LEAVE: "stop offering this machine: the running agent closes every lease, leaves the platform and exits "
    "(SIGTERM, as on a restart or an upgrade, keeps the leases running)",
}


def build_parser(
    command: str | None = None,
    *,
    argv: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    read_config: bool = True,
) -> argparse.ArgumentParser:
    """The agent's options (and a subcommand's own), with defaults from the config file, then from
    DCLUSTER_* variables: a flag given in argv wins over both."""
    environ = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="dcluster-agent" + (f" {command}" if command else ""),
        description=COMMANDS[command].capitalize()
        if command
        else "Offer this machine on a decentralized-clusters platform. The password is read from "
        f"--password-file or ${PASSWORD_ENV}, never from the command line (visible in ps). Also: "
        + "; ".join(f"`dcluster-agent {name}`: {what}" for name, what in COMMANDS.items()),
    )
    p.add_argument(
        config_file.OPTION,
        type=Path,
        default=None,
        metavar="PATH",
        help=f"TOML file of options (default {config_file.DEFAULT_PATH} when present); "
        f"a flag, then {env_options.ENV_PREFIX}<OPTION>, win over it",
    )
    p.add_argument("--platform-url", help="Base URL of the platform API, e.g. https://market.example.com")
    p.add_argument("--username", help="Provider account name")
    p.add_argument(
        "--password-file",
        type=Path,
        help=f"File holding the password (else ${PASSWORD_ENV}); needed only to enroll the machine",
    )
    p.add_argument(
        "--enroll",
        action="store_true",
        help="Enroll this machine again with the password, replacing the agent key it keeps (after a "
        "revoke, or on a new platform)",
    )
    p.add_argument(
        "--fingerprint",
        metavar="SHA256:HEX",
        help="The platform's certificate authority fingerprint (its operator publishes it): checked, then pinned "
        "in machine.json; every later call must reach a server holding a certificate it issued",
    )
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="Pin whatever certificate authority the platform presents at the first start (logs its fingerprint)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="Allow a plain http:// platform on another machine (the password and the agent key unencrypted)",
    )
    p.add_argument("--name", help="Display name of this machine (default: hostname)")
    p.add_argument(
        "--node-ip",
        metavar="ADDRESS",
        help="The address the platform, other providers' nodes and buyers reach this machine's leases at "
        "(default: this machine's address on its route to the platform)",
    )
    p.add_argument("--state-dir", type=Path, default=None, help="Where machine.json lives (default ~/.dcluster-agent)")
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="Declare N GPUs instead of detecting them with NVML (0: CPU-only)",
    )
    p.add_argument("--gpu-model", default="Logical GPU", help="Model name of declared GPUs")
    p.add_argument("--gpu-memory-mb", type=int, default=0, help="Memory of each declared GPU, MiB")
    p.add_argument(
        "--cpus", type=int, default=None, metavar="N", help="Offer N logical CPUs instead of the detected count"
    )
    # No default: a forgotten flag must not offer the machine for free (0 is a price one can still ask for).
    p.add_argument("--price-per-gpu-hour", type=float, default=None, help="USD per GPU-hour (required)")
    p.add_argument(
        "--price-per-cpu-hour", type=float, default=None, help="USD per CPU-hour of CPU-only leases (required)"
    )
    p.add_argument(
        "--runtime",
        choices=domain.SANDBOX_RUNTIMES,
        default=None,
        help="Where buyers' leases run: docker (one container each; the default when a docker daemon "
        "answers), bwrap (a bubblewrap sandbox each; the default otherwise) or none (needs "
        f"{domain.UNSANDBOXED_FLAG})",
    )
    p.add_argument(
        domain.UNSANDBOXED_FLAG,
        dest="unsandboxed_ok",
        action="store_true",
        help="With --runtime none: buyers' code runs as this agent's user and can read what it can "
        "(its password, other leases' tokens); offers show the machine as unsandboxed",
    )
    p.add_argument(
        "--lease-memory-mb",
        type=int,
        default=None,
        metavar="MB",
        help="Most memory one lease may use (default: its CPUs' share of the machine's RAM)",
    )
    p.add_argument("--lease-pids", type=int, default=4096, metavar="N", help="Most processes in one lease")
    p.add_argument(
        "--gpu-device-dir",
        type=Path,
        default=Path("/dev"),
        help="Where the GPUs' device nodes are (tests point it at fake nodes)",
    )
    p.add_argument(
        "--test-fake-nvml",
        type=Path,
        default=None,
        metavar="FILE",
        help="TESTS ONLY: read GPUs from a fake NVML described in FILE (JSON, see worker/agent/fake_nvml.py) "
        "instead of the real one; GPU checks report the fake, so a real platform never verifies the machine",
    )
    p.add_argument(
        "--docker-image",
        default=None,
        help="Image of leases under --runtime docker (default: the platform image, built locally)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--detect-only", action="store_true", help="Print the detected machine as JSON and exit")
    p.add_argument("--version", action="version", version=versions.describe("dcluster-agent"))
    if command == DOCTOR:
        doctor_run.add_options(p)
    elif command == INSTALL_SERVICE:
        service.add_options(p)
    elif command == LEAVE:
        leave_run.add_options(p)
    p.epilog = (
        f"Every option can also come from the environment: {env_options.ENV_PREFIX}<OPTION> (e.g. "
        f"{env_options.ENV_PREFIX}PLATFORM_URL, {env_options.ENV_PREFIX}PRICE_PER_GPU_HOUR), or from the config "
        'file (platform_url = "https://..."); a flag given on the command line wins, then the environment.'
    )
    path = config_file.pick_path(argv, environ, env_options.env_name(config_file.OPTION))
    # install-service writes the file it is given when it is not there yet.
    if read_config and path is not None and not (command == INSTALL_SERVICE and not path.exists()):
        try:
            config_file.defaults_from_file(p, path, config_file.read(path))
        except config_file.ConfigError as exc:
            p.error(str(exc))
    env_options.defaults_from_environment(p, environ)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is not None:
        argv = argv[1:]
    parser = build_parser(command, argv=argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":  # httpx logs every request at INFO: a heartbeat line every few seconds
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.gpus is not None and not 0 <= args.gpus <= detect.MAX_GPUS:
        parser.error(f"--gpus must be between 0 and {detect.MAX_GPUS}")

    fake_nvml_text = None
    if args.test_fake_nvml is not None:
        if args.gpus is not None:
            parser.error("--test-fake-nvml stands in for detected GPUs; it cannot be combined with --gpus")
        try:
            fake_nvml_text = args.test_fake_nvml.read_text()
            fake_nvml.FakeNvml.from_json(fake_nvml_text)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(f"--test-fake-nvml: {exc}")
        logger.warning(
            "TESTS ONLY: GPUs come from the fake NVML in %s; no platform verifies this machine's GPUs "
            "unless it was told to accept fakes",
            args.test_fake_nvml,
        )

    if command == DOCTOR:
        state_dir = args.state_dir if args.state_dir is not None else state_mod.default_state_dir()
        return doctor_run.run(
            args,
            lambda url: platform_client(url, state_dir, fingerprint=args.fingerprint, insecure=args.insecure),
            nvml=fake_nvml.FakeNvml.from_json(fake_nvml_text) if fake_nvml_text else None,
        )
    if command == LEAVE:
        return leave_run.run(args, args.state_dir if args.state_dir is not None else state_mod.default_state_dir())
    if command == INSTALL_SERVICE:
        pristine = build_parser(INSTALL_SERVICE, environ={}, read_config=False)
        return service.install(parser, args, vars(pristine.parse_args([])))

    if args.detect_only:
        spec = detect.detect_machine(
            args.gpus,
            args.gpu_model,
            args.gpu_memory_mb,
            declared_cpus=args.cpus,
            nvml=fake_nvml.FakeNvml.from_json(fake_nvml_text) if fake_nvml_text else None,
        )
        print(spec.model_dump_json(indent=2))
        return 0

    if args.runtime == domain.UNSANDBOXED and not args.unsandboxed_ok:
        parser.error(
            f"--runtime none runs buyers' code as this agent's own user, with its password and every "
            f"other lease in reach; add {domain.UNSANDBOXED_FLAG} to accept that"
        )
    if not args.platform_url or not args.username:
        parser.error("--platform-url and --username are required (unless --detect-only)")
    try:
        password = read_password(args.password_file)
    except OSError as exc:
        parser.error(f"cannot read --password-file: {exc}")
    state_dir = args.state_dir if args.state_dir is not None else state_mod.default_state_dir()
    if args.enroll:
        if not password:
            parser.error(f"--enroll needs the provider's password: --password-file FILE or ${PASSWORD_ENV}")
        state_mod.forget_agent_key(state_dir)
    if not password and not state_mod.has_agent_key(state_dir):
        parser.error(
            f"no password: this machine is not enrolled yet; pass --password-file FILE or set ${PASSWORD_ENV} "
            f"(it is used once: the machine then gets its own agent key)"
        )

    unpriced = [
        flag
        for flag, value in (
            ("--price-per-gpu-hour", args.price_per_gpu_hour),
            ("--price-per-cpu-hour", args.price_per_cpu_hour),
        )
        if value is None
    ]
    if unpriced:
        parser.error(
            f"{' and '.join(unpriced)} required: what buyers pay for this machine, in USD (0 offers it for free)"
        )
    runtime = args.runtime or sandbox.default_runtime()
    fields = {
        "platform_url": args.platform_url,
        "username": args.username,
        "password": password or None,
        "name": args.name,
        "declared_gpus": args.gpus,
        "declared_gpu_model": args.gpu_model,
        "declared_gpu_memory_mb": args.gpu_memory_mb,
        "declared_cpus": args.cpus,
        "price_per_gpu_hour": args.price_per_gpu_hour,
        "price_per_cpu_hour": args.price_per_cpu_hour,
        "runtime": runtime,
        "lease_memory_mb": args.lease_memory_mb,
        "lease_pids": args.lease_pids,
        "gpu_device_dir": args.gpu_device_dir,
        "docker_image": args.docker_image,
        "node_ip": args.node_ip,
        "test_fake_nvml": fake_nvml_text,
    }
    if args.state_dir is not None:
        fields["state_dir"] = args.state_dir
    try:
        settings = agent_mod.AgentSettings(**fields)
    except pydantic.ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        parser.error(errors)  # pydantic's own text would echo the input, password included

    try:
        trust = platform_trust.resolve(
            settings.platform_url,
            settings.state_dir,
            fingerprint=args.fingerprint,
            trust_on_first_use=args.trust_on_first_use,
            insecure=args.insecure,
        )
    except (ValueError, dcluster.InsecureTransport) as exc:
        parser.error(str(exc))
    except dcluster.ClientError as exc:
        logger.error("%s", exc)
        return 1
    client = dcluster.Client(settings.platform_url, trust=trust)
    try:
        agent = agent_mod.Agent(client, settings)
    except OSError as exc:
        logger.error("cannot use state dir %s: %s", settings.state_dir, exc)
        client.close()
        return 1
    except sandbox_base.SandboxError as exc:
        logger.error("cannot run leases with --runtime %s: %s", runtime, exc)
        client.close()
        return 1
    logger.info("leases run with --runtime %s", runtime)

    def _on_signal(signum, _frame):
        leave = signum in stopping.LEAVE_SIGNALS
        what = "closing every lease and leaving the platform" if leave else "a restart: the leases keep running"
        logger.info("received %s; %s", signal.Signals(signum).name, what)
        agent.stop(leave=leave)

    for signum in (*stopping.RESTART_SIGNALS, *stopping.LEAVE_SIGNALS):
        signal.signal(signum, _on_signal)
    try:
        stopping.write_pid(settings.state_dir)
        agent.run()
    finally:
        stopping.clear_pid(settings.state_dir)
        client.close()
    if agent.revoked:
        return EXIT_KEY_REFUSED
    if agent.protocol_refused:
        print(f"dcluster-agent: {agent.protocol_refused}", file=sys.stderr)
        return EXIT_PROTOCOL
    return 0


def platform_client(platform_url: str, state_dir: Path, *, fingerprint: str | None, insecure: bool) -> dcluster.Client:
    """The client the doctor checks through: the agent's, trusting the certificate authority of --fingerprint, else
    the one it pinned (if any); it pins nothing."""
    trust = platform_trust.for_check(platform_url, state_dir, fingerprint=fingerprint, insecure=insecure)
    return dcluster.Client(platform_url, trust=trust)


if __name__ == "__main__":
    sys.exit(main())
