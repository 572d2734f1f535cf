"""dcluster-agent doctor: each check fed fakes for every outcome, and the real ones run where this machine allows
(a real bwrap sandbox, this machine's cgroups, a real HTTP server for the platform, the command itself)."""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import dcluster
from dcl_core import domain, protocol
from dcluster import tls as client_tls
from tests import tls_server
from worker.agent import cli as agent_cli
from worker.agent import doctor, doctor_run
from worker.agent import state as state_mod
from worker.agent.sandbox import bwrap_version, cgroups, docker

REPO = Path(__file__).resolve().parents[4]
OK, WARN, FAIL = doctor.Level.OK, doctor.Level.WARN, doctor.Level.FAIL


def levels(*checks: doctor.Check) -> list[doctor.Level]:
    return [c.level for c in checks]


def test_sandbox_runtime_outcomes():
    def check(runtime, *, which=lambda _: "/usr/bin/x", run=lambda argv: (0, ""), answers=True, **kw):
        return doctor.sandbox_runtime(runtime, which=which, run=run, docker_answers=lambda: answers, as_root=True, **kw)

    assert check("bwrap").level is OK
    missing = check("bwrap", which=lambda _: None)
    assert missing.level is FAIL and "apt-get install bubblewrap" in missing.text
    broken = check("bwrap", run=lambda argv: (1, "bwrap: Creating new namespace failed: Operation not permitted"))
    assert broken.level is FAIL and "Operation not permitted" in broken.text
    assert check("docker").level is OK
    assert (
        check("docker", answers=False).level is FAIL and "systemctl start docker" in check("docker", answers=False).text
    )
    assert check("docker", which=lambda _: None).level is FAIL
    assert check("none").level is FAIL and domain.UNSANDBOXED_FLAG in check("none").text
    assert check("none", unsandboxed_ok=True).level is WARN


def test_kernel_surface_names_what_keeps_a_machine_from_being_offered_as_sandboxed():
    assert doctor.kernel_surface("bwrap", None).level is OK
    assert doctor.kernel_surface("docker", None).level is OK
    assert doctor.kernel_surface("none", None).level is WARN
    old = doctor.kernel_surface("bwrap", bwrap_version.version_problem((0, 7, 0), as_root=False))
    assert old.level is FAIL and "bubblewrap 0.7.0 is too old" in old.text and "0.8.0 or newer" in old.text
    assert "cannot be offered as sandboxed" in old.text
    unconfined = doctor.kernel_surface("docker", docker.seccomp_problem('["name=seccomp,profile=unconfined"]'))
    assert unconfined.level is FAIL and "unconfined" in unconfined.text
    assert docker.seccomp_problem('["name=apparmor"]') and not docker.seccomp_problem(
        '["name=seccomp,profile=builtin"]'
    )


def test_bwrap_versions():
    assert bwrap_version.parse_version("bubblewrap 0.8.0\n") == (0, 8, 0)
    assert bwrap_version.parse_version("bubblewrap 0.11") == (0, 11, 0)
    assert bwrap_version.parse_version("bwrap: unknown") is None
    assert bwrap_version.version_problem((0, 7, 9), as_root=True) is None  # root: the seccomp filter alone
    assert bwrap_version.version_problem((0, 8, 0), as_root=False) is None
    assert "unknown version" in bwrap_version.version_problem(None, as_root=False)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_the_bwrap_probe_really_makes_a_sandbox():
    real = doctor.sandbox_runtime(
        "bwrap", run=doctor.run_quietly, docker_answers=lambda: False, as_root=os.geteuid() == 0
    )
    assert real.level is OK, real.text
    code, output = doctor.run_quietly(["bwrap", "--bogus-flag"])
    assert code != 0 and output  # the failure the check would report


def test_cgroups_v1_v2_and_partial(tmp_path):
    wanted = ("memory", "pids", "cpu", "freezer")
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    on_v2 = doctor.cgroup_limits(v2, [], wanted)
    assert on_v2.level is FAIL and "not supported on v2 yet" in on_v2.text and "sandboxed" in on_v2.text
    v1 = tmp_path / "v1"
    for c in wanted:
        (v1 / c).mkdir(parents=True)
        (v1 / c / "cgroup.procs").write_text("")
    assert doctor.cgroup_limits(v1, list(wanted), wanted).level is OK
    partial = doctor.cgroup_limits(v1, ["memory"], wanted)
    assert partial.level is WARN and "pids, cpu, freezer" in partial.text
    assert doctor.cgroup_limits(tmp_path / "empty", [], wanted).level is FAIL


def test_this_machines_cgroups():
    """This machine has cgroup v1 (DESIGN.md); as root every controller is writable."""
    real = doctor.cgroup_limits(cgroups.ROOT, cgroups.available(), cgroups.CONTROLLERS)
    assert real.level is (OK if os.geteuid() == 0 else WARN), real.text


def test_user_gpus_toolkit_and_disk():
    assert doctor.user(0).level is OK and doctor.user(1000).level is WARN
    gpu = domain.GpuInfo(index=0, model="RTX 4090", memory_mb=24564)
    seen, count = doctor.gpus(lambda: ([gpu, gpu.model_copy(update={"index": 1})], "550.54", "12.4"))
    assert (seen.level, count) == (OK, 2) and "2 x RTX 4090, driver 550.54, CUDA 12.4" in seen.text

    def no_library():
        raise OSError("NVML Shared Library Not Found")

    cpu_only, count = doctor.gpus(no_library)
    assert (cpu_only.level, count) == (OK, 0) and "CPU-only" in cpu_only.text
    assert doctor.container_toolkit("docker", 2, lambda: '{"nvidia": {}, "runc": {}}').level is OK
    missing = doctor.container_toolkit("docker", 2, lambda: '{"runc": {}}')
    assert missing.level is WARN and "nvidia-ctk runtime configure" in missing.text
    assert doctor.container_toolkit("bwrap", 2, lambda: pytest.fail("not asked")).level is OK
    assert doctor.container_toolkit("docker", 0, lambda: pytest.fail("not asked")).level is OK
    gib = doctor.GIB
    assert levels(*(doctor.free_disk(Path("/x"), n * gib) for n in (100, 10, 1))) == [OK, WARN, FAIL]


def test_lighthouse():
    assert doctor.lighthouse(None, lambda h, p: pytest.fail("not asked")).text == "not configured"
    assert doctor.lighthouse("lh.example:4242", lambda h, p: ["198.51.100.7"]).level is OK
    assert doctor.lighthouse("lh.example", lambda h, p: []).level is FAIL

    def nxdomain(host, port):
        raise OSError("Name or service not known")

    assert doctor.lighthouse("nope.invalid:4242", nxdomain).level is FAIL


class Platform(http.server.BaseHTTPRequestHandler):
    """A real HTTP server standing for the platform's /healthz: its status, body and clock are the test's."""

    status = 200
    body: dict = {"status": "ok", "protocol": protocol.PROTOCOL_VERSION}
    clock_offset_s = 0.0
    headers_seen: dict = {}

    def do_GET(self):
        type(self).headers_seen = dict(self.headers)
        content = json.dumps(self.body).encode()
        self.send_response_only(self.status)
        now = datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)
        self.send_header("Date", email.utils.format_datetime(now, usegmt=True))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args):
        pass


@pytest.fixture
def platform():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    Platform.status, Platform.clock_offset_s = 200, 0.0
    Platform.body = {"status": "ok", "protocol": protocol.PROTOCOL_VERSION}


def probe(url):
    before = datetime.now(UTC)
    try:
        with dcluster.Client(url) as client:
            answer: dcluster.Probe | Exception = client.probe()
    except dcluster.PlatformUnreachable as exc:
        answer = exc
    return answer, doctor.platform(url, answer), doctor.clock_skew(answer, before, datetime.now(UTC))


def test_platform_and_clock_through_the_real_client(platform):
    answer, reach, clock = probe(platform)
    assert (reach.level, clock.level) == (OK, OK), (reach.text, clock.text)
    assert Platform.headers_seen[protocol.PROTOCOL_HEADER] == str(protocol.PROTOCOL_VERSION)
    Platform.clock_offset_s = -45.0  # this machine is 45 s ahead
    _, _, clock = probe(platform)
    assert clock.level is FAIL and "+4" in clock.text and "timedatectl set-ntp true" in clock.text
    Platform.clock_offset_s = 6.0
    assert probe(platform)[2].level is WARN
    Platform.body = {"status": "ok", "protocol": protocol.PROTOCOL_VERSION + 1}
    _, reach, _ = probe(platform)
    assert reach.level is FAIL and f"platform protocol {protocol.PROTOCOL_VERSION + 1}" in reach.text
    Platform.status, Platform.body = 503, {"detail": "starting: ProviderRegistry"}
    _, reach, _ = probe(platform)
    assert reach.level is WARN and "starting: ProviderRegistry" in reach.text


def test_an_unreachable_platform_fails_and_the_clock_is_not_compared():
    with socket_closed() as port:
        _, reach, clock = probe(f"http://127.0.0.1:{port}")
    assert reach.level is FAIL and "outbound HTTPS" in reach.text
    assert clock.level is WARN


@contextlib.contextmanager
def socket_closed():
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def test_the_command_prints_one_line_per_check_and_exits_non_zero_on_a_fail(platform, tmp_path):
    def doctor_cmd(url):
        return subprocess.run(
            [sys.executable, "-m", "worker.agent.cli", "doctor", "--platform-url", url, "--state-dir", str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DCLUSTER_RUNTIME": "bwrap"},
        )

    done = doctor_cmd(platform)
    lines = done.stdout.splitlines()
    names = [line.split(": ")[0].split(None, 1)[1] for line in lines[:-1]]
    assert names == [
        "sandbox runtime (bwrap)",
        "kernel surface",
        "cgroups",
        "user",
        "GPUs",
        "NVIDIA container toolkit",
        "disk",
        f"platform {platform}",
        "clock",
        "overlay lighthouse",
    ], done.stdout
    assert lines[1].startswith("ok    kernel surface: every lease runs under a seccomp filter"), done.stdout
    failed = [line for line in lines if line.startswith("FAIL")]
    assert done.returncode == (1 if failed else 0), done.stdout
    Platform.body = {"status": "ok", "protocol": protocol.PROTOCOL_VERSION + 1}
    refused = doctor_cmd(platform)
    assert refused.returncode == 1 and f"FAIL  platform {platform}" in refused.stdout


def test_the_platform_check_trusts_what_the_agent_would_and_pins_nothing(tmp_path):
    """Before enrollment nothing is pinned: a platform with a CA of its own fails naming --fingerprint; with the
    right fingerprint it answers; a wrong one and plain HTTP to another machine fail, each saying why."""
    platform_ca = tls_server.Authority.make("platform CA")
    fingerprint = client_tls.fingerprint(platform_ca.ca_pem)

    def check(url, **trust):
        args = {"fingerprint": None, "insecure": False, **trust}
        return doctor_run.platform_checks(url, lambda u: agent_cli.platform_client(u, tmp_path, **args))[0]

    with tls_server.running(platform_ca) as server:
        unpinned = check(server.url)
        assert unpinned.level is FAIL and "--fingerprint" in unpinned.text, unpinned.text
        pinned = check(server.url, fingerprint=fingerprint)
        assert pinned.level is OK, pinned.text
        wrong = check(server.url, fingerprint="SHA256:" + "2" * 64)
        assert wrong.level is FAIL and fingerprint in wrong.text and "SHA256:" + "2" * 64 in wrong.text, wrong.text
    assert state_mod.MachineState(tmp_path).platform_ca is None  # the doctor changes nothing
    clear = check("http://198.51.100.7:8000")
    assert clear.level is FAIL and "--insecure" in clear.text, clear.text
