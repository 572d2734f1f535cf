"""A buyer's job that tries to get out of its lease: every attempt is recorded, with the errno it met.

Submitted with `ray job submit` to the attacker's own cluster; argv[1] is a JSON object naming the
targets (paths on the provider's machine the attacker is assumed to know). Prints one line
`ESCAPE_RESULT {...}` before the memory attempt, and `ESCAPE_MEMORY {...}` after it.
"""

import errno
import json
import os
import subprocess
import sys

import ray


def attempt(fn) -> str:
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def read(path: str, markers: tuple[str, ...] = ()) -> str:
    """ "ok", or the errno; "ok-not-theirs" when what it read holds none of the markers (inside the lease's pid
    namespace, /proc/<the agent's host pid> can be one of the lease's own processes)."""
    content: list[bytes] = []
    result = attempt(lambda: content.append(open(path, "rb").read()))
    if result == "ok" and markers and not any(m.encode() in content[0] for m in markers):
        return "ok-not-theirs"
    return result


def write(path: str) -> str:
    return attempt(lambda: open(path, "wb").write(b"escaped"))


@ray.remote(num_gpus=1, num_cpus=0)
def gpu_view() -> dict:
    """On the GPU worker: ask for every GPU of the machine, then look at what exists."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    listing = subprocess.run(["sh", "-c", "ls /dev"], env=env, capture_output=True, text=True).stdout.split()
    opened = {name: read(f"/dev/{name}") for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3")}
    return {
        "ray_cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "nvidia_nodes": sorted(n for n in listing if n.startswith("nvidia") and n[6:].isdigit()),
        "opened": opened,
    }


def kernel_surface() -> dict:
    """The job's seccomp mode (2: a filter), and whether it can make a user namespace (uid 0 in it)."""
    seccomp = next((line.split()[1] for line in open("/proc/self/status") if line.startswith("Seccomp:")), "absent")
    userns = subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True, text=True)
    return {"seccomp": seccomp, "unshare_user": "ok" if userns.returncode == 0 else userns.stderr.strip()[-200:]}


def exec_attacks(canary: str) -> dict:
    """With its cluster's own launcher credential (the head's bootstrap config), ask the platform to run, on each
    node of the cluster, a command that puts the root-only canary at its own log's name; every answer comes back."""
    import yaml

    from worker.node_provider import market_provider

    with open(os.path.expanduser("~/ray_bootstrap_config.yaml")) as f:
        config = yaml.safe_load(f)
    nodes = market_provider.MarketNodeProvider(config["provider"], config["cluster_name"]).api
    log = 'log="$(readlink /proc/$$/fd/1)"; '
    commands = {
        "symlinked_log": log + f'ln -sf {canary} "$log"',
        "fifo_log": log + 'rm -f "$log"; mkfifo "$log"',
        "hard_linked_log": log + f'ln -f {canary} "$log"',
        "symlinked_logs_dir": log + 'logs="$(dirname "$log")"; mv "$logs" "$logs.x" && ln -sfn / "$logs"',
    }
    answers = {}
    for node in nodes.list():
        for name, cmd in commands.items():
            answers[f"{node['role']}:{name}"] = nodes.exec(
                node["id"], {"op": "run", "cmd": cmd, "timeout_s": 60}, timeout_s=60, idempotent=False
            )
    return answers


def main() -> None:
    targets = json.loads(sys.argv[1])
    ray.init()
    out = {
        "reads": {
            name: read(path, tuple(targets.get("markers", {}).get(name, ()))) for name, path in targets["reads"].items()
        },
        "writes": {name: write(path) for name, path in targets["writes"].items()},
    }
    secret = targets.get("provider_password", "")
    out["env_has_provider_password"] = any(secret and secret in v for v in os.environ.values())
    keys = targets.get("agent_keys", [])
    out["env_has_agent_key"] = any(k in v for k in keys for v in os.environ.values())
    out["env_names"] = sorted(os.environ)
    # A process that hides from the agent's tag and from the job's session; it must not outlive the lease.
    marker = targets["sleep_marker"]
    subprocess.Popen(
        f"env -u DCLUSTER_OWNER setsid nohup sleep {marker} >/dev/null 2>&1 < /dev/null &", shell=True
    ).wait()
    out["gpu"] = ray.get(gpu_view.remote())
    out["kernel"] = kernel_surface()
    out["pid_namespace_processes"] = len([p for p in os.listdir("/proc") if p.isdigit()])
    out["exec_attacks"] = exec_attacks(targets["canary"])
    print("ESCAPE_RESULT " + json.dumps(out), flush=True)
    # Past the lease's memory limit: the OOM killer must end the grower (SIGKILL), not the machine.
    grow = subprocess.run(
        [sys.executable, "-c", f"x = b'1' * ({targets['grow_mb']:d} * 1024 * 1024); print('GREW')"],
        capture_output=True,
        text=True,
    )
    print("ESCAPE_MEMORY " + json.dumps({"returncode": grow.returncode, "grew": "GREW" in grow.stdout}), flush=True)


if __name__ == "__main__":
    main()
