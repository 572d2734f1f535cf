"""AgentCommandRunner: the launcher's commands for one lease, sent to the agent that holds it (no SSH)."""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import os
import posixpath
import shlex
from typing import Any, Protocol

from ray.autoscaler._private.cli_logger import cf, cli_logger
from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError
from ray.autoscaler.command_runner import CommandRunnerInterface

import dcluster
from dcl_core import commands, protocol

logger = logging.getLogger(__name__)

# The updater reads this msg_type to say "see above for stderr"; it is SSHCommandRunner's value.
MSG_TYPE = "ssh_command_failed"
MAX_COMMAND_TIMEOUT_S = protocol.MAX_COMMAND_TIMEOUT_S
# run_rsync_down's remote command prints the file between these lines: its size, then base64.
FILE_BEGIN, FILE_END = "__DCL_FILE_BEGIN__", "__DCL_FILE_END__"


class NodeExecutor(Protocol):
    """What the runner needs from the platform: MarketNodeProvider's node API implements it."""

    def exec(self, node_id: str, body: dict, *, timeout_s: float, idempotent: bool) -> dict:
        """POST .../nodes/{nid}/exec and return the WorkResult dict; retries an unreachable platform
        (only before the request was sent unless idempotent), then raises PlatformUnreachable/ApiError."""
        ...


def encode_env(environment_variables: dict[str, object] | None) -> dict[str, str]:
    """Strings as they are; anything else as compact JSON (what SSHCommandRunner exports).

    SSHCommandRunner JSON-encodes strings too, which leaves literal quotes in the value; the launcher
    only ever passes ints and dicts (RAY_USAGE_STATS_ENABLED, RAY_OVERRIDE_RESOURCES/LABELS), where
    both agree.
    """
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in (environment_variables or {}).items()
    }


def shell_path(path: str) -> str:
    """Quote a remote path for the shell, keeping a leading '~' expandable (the lease's HOME)."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:]) if path[2:] else "~/"
    return shlex.quote(path)


class Redactor:
    """Removes secrets (the provider token, Ray auth tokens) from text before it is logged."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        self._secrets = tuple(s for s in secrets if s)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, commands.REDACTED)
        return commands.redact(text)

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return {
            k: commands.REDACTED if k.startswith(commands.SECRET_ENV_PREFIX) else self.text(v) for k, v in env.items()
        }


class AgentCommandRunner(CommandRunnerInterface):
    """Runs launcher commands in one lease through the platform; the agent runs them with bash locally."""

    def __init__(
        self,
        log_prefix: str,
        node_id: str,
        nodes: NodeExecutor,
        *,
        cluster_name: str = "",
        secrets: tuple[str, ...] = (),
    ):
        self.log_prefix = log_prefix
        self.node_id = node_id
        self.cluster_name = cluster_name
        self._nodes = nodes
        self._redact = Redactor(secrets)

    def __repr__(self) -> str:
        return f"AgentCommandRunner({self.node_id!r})"

    # --- CommandRunnerInterface -----------------------------------------------------------

    def run(
        self,
        cmd: str | None = None,
        timeout: int = 120,
        exit_on_fail: bool = False,
        port_forward: list[tuple[int, int]] | None = None,
        with_output: bool = False,
        environment_variables: dict[str, object] | None = None,
        run_env: str = "auto",
        ssh_options_override_ssh_key: str = "",
        shutdown_after_run: bool = False,
        silent: bool = False,
    ) -> bytes | str:
        """Run cmd in the lease and wait for it; non-zero exit raises ProcessRunnerError (never exits).

        `timeout` bounds the command's run time on the agent (SSH uses it as a connect timeout only).
        Output: bytes when with_output, else "". Port forwarding and shutdown do not exist here.
        """
        if shutdown_after_run:
            logger.warning(
                "%signoring shutdown_after_run: a lease never shuts down its provider's machine", self.log_prefix
            )
        if port_forward:
            logger.warning(
                "%sport forwarding is not available on market nodes (there is no SSH); reach the head's ports directly",
                self.log_prefix,
            )
        if not cmd:
            return b"" if with_output else ""
        env = encode_env(environment_variables)
        shown_cmd = self._redact.text(cmd)
        cli_logger.verbose("Running `{}`", cf.bold(shown_cmd))
        if env:
            with cli_logger.indented():
                cli_logger.very_verbose("Environment: {}", self._redact.env(env))
        timeout_s = min(MAX_COMMAND_TIMEOUT_S, max(1.0, float(timeout or 120)))
        body = {"op": "run", "cmd": cmd, "env": env, "timeout_s": timeout_s}
        result = self._exec(body, timeout_s=timeout_s, what=shown_cmd, idempotent=False)
        output = str(result.get("output") or "")
        exit_code = result.get("exit_code")
        failed = not result.get("ok") or exit_code != 0
        self._show_output(output, failed=failed, silent=silent)
        if failed:
            if exit_code is None:
                raise ProcessRunnerError(
                    f"Command could not run in lease {self.node_id}: "
                    f"{self._redact.text(output)[-500:] or 'no reason given'}",
                    MSG_TYPE,
                    code=None,
                    command=shown_cmd,
                )
            raise ProcessRunnerError("Command failed", MSG_TYPE, code=exit_code, command=shown_cmd)
        return output.encode() if with_output else ""

    def run_rsync_up(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        """Copy a local file, or every file under a local directory (rsync's trailing-slash rules), up."""
        options = options or {}
        source = os.path.expanduser(source)
        if os.path.isdir(source):
            base = target if source.endswith("/") else target.rstrip("/") + "/" + os.path.basename(source.rstrip("/"))
            excludes = list(options.get("rsync_exclude") or [])
            files = []
            for root, dirs, names in os.walk(source):
                rel_root = os.path.relpath(root, source)
                dirs[:] = sorted(d for d in dirs if not _excluded(_join(rel_root, d), excludes))
                files += [_join(rel_root, n) for n in sorted(names) if not _excluded(_join(rel_root, n), excludes)]
            parents = sorted({_parent(base.rstrip("/") + "/" + rel) for rel in files} | {base.rstrip("/") or "/"})
            self.run("mkdir -p " + " ".join(shell_path(p) for p in parents))
            for rel in files:
                self._put_file(os.path.join(source, rel), base.rstrip("/") + "/" + rel)
        elif os.path.isfile(source):
            remote = target + os.path.basename(source) if target.endswith("/") else target
            self._put_file(source, remote)
        else:
            raise ProcessRunnerError(
                f"rsync up: local path {source} does not exist", MSG_TYPE, command=f"rsync {source} {target}"
            )

    def run_rsync_down(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        """Copy one remote file down (base64 through the agent's output, so at most ~48 KiB)."""
        path = shell_path(source)
        cmd = f"wc -c < {path} && echo {FILE_BEGIN} && base64 -w0 {path} && echo && echo {FILE_END}"
        text = self.run(cmd, with_output=True, silent=True).decode()
        try:
            size = int(text.split(FILE_BEGIN, 1)[0].split()[-1])
            data = base64.b64decode(text.split(FILE_BEGIN, 1)[1].split(FILE_END, 1)[0].strip(), validate=True)
        except (IndexError, ValueError) as exc:
            raise ProcessRunnerError(
                f"rsync down of {source}: unreadable answer from the agent ({exc})",
                MSG_TYPE,
                command=f"rsync {source} {target}",
            ) from None
        if len(data) != size:
            raise ProcessRunnerError(
                f"rsync down of {source}: got {len(data)} of {size} bytes; the agent's output "
                "limit truncates files over ~48 KiB",
                MSG_TYPE,
                command=f"rsync {source} {target}",
            )
        local = os.path.expanduser(target)
        if local.endswith("/") or os.path.isdir(local):
            local = os.path.join(local, os.path.basename(source.rstrip("/")))
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        with open(local, "wb") as f:
            f.write(data)

    def remote_shell_command_str(self) -> str:
        return (
            f"# Lease {self.node_id} has no remote shell: the provider's agent only runs launcher commands. "
            f"Use `ray exec` or `ray job submit` instead.\n"
        )

    def run_init(self, *, as_head: bool, file_mounts: dict[str, str], sync_run_yet: bool) -> bool | None:
        return None  # no docker on market nodes

    # --- plumbing -------------------------------------------------------------------------

    def _put_file(self, local_path: str, remote_path: str) -> None:
        with open(local_path, "rb") as f:
            content = base64.b64encode(f.read()).decode("ascii")
        body = {"op": "put_file", "path": remote_path, "content_b64": content}
        cli_logger.verbose("Sending {} to `{}`", local_path, remote_path)
        result = self._exec(body, timeout_s=120.0, what=f"put_file {remote_path}", idempotent=True)
        if not result.get("ok"):
            raise ProcessRunnerError(
                f"Writing {remote_path} in lease {self.node_id} failed: "
                f"{self._redact.text(str(result.get('output') or ''))[-500:]}",
                MSG_TYPE,
                code=result.get("exit_code"),
                command=f"put_file {remote_path}",
            )

    def _exec(self, body: dict, *, timeout_s: float, what: str, idempotent: bool) -> dict:
        """One exec call (the node API retries what is safe to retry); failures become ProcessRunnerError."""
        try:
            result = self._nodes.exec(self.node_id, body, timeout_s=timeout_s, idempotent=idempotent)
        except dcluster.PlatformUnreachable as exc:
            raise ProcessRunnerError(
                f"The platform is unreachable, so lease {self.node_id} cannot run commands ({exc}). "
                "Check the provider's platform_url and the platform's health.",
                MSG_TYPE,
                command=what,
            ) from None
        except dcluster.ApiError as exc:
            raise ProcessRunnerError(
                f"The platform refused to run `{what}` in lease {self.node_id}: "
                f"HTTP {exc.status_code}: {self._redact.text(str(exc.detail))}",
                MSG_TYPE,
                code=None,
                command=what,
            ) from None
        return result if isinstance(result, dict) else {}

    def _show_output(self, output: str, *, failed: bool, silent: bool) -> None:
        """Failures always show (the updater then says "see above for stderr"); successes when verbose."""
        if not output or (silent and not failed):
            return
        shown = self._redact.text(output).rstrip("\n")
        logger.debug("%soutput:\n%s", self.log_prefix, shown)
        if failed:
            cli_logger.print("{}", shown)
        else:
            cli_logger.verbose("{}", shown)


def _join(rel_root: str, name: str) -> str:
    return name if rel_root in ("", ".") else f"{rel_root}/{name}"


def _parent(path: str) -> str:
    return posixpath.dirname(path) or "."


def _excluded(rel: str, patterns: list[str]) -> bool:
    """rsync --exclude, simplified: a pattern matches the relative path or any of its names."""
    return any(
        fnmatch.fnmatch(rel, p.strip("/")) or fnmatch.fnmatch(os.path.basename(rel), p.strip("/")) for p in patterns
    )
