"""The agent's trust in the platform: the CA pinned in machine.json at enrollment by fingerprint (a wrong one
refused, nothing pinned), used by every later start; trust on first use only when told; no plain HTTP to
another machine without --insecure. Against a real TLS server on 127.0.0.1, a second CA as the attacker."""

from __future__ import annotations

import json
import stat

import pytest

import dcluster
from dcl_core import domain
from dcluster import tls as client_tls
from tests import tls_server
from worker.agent import cli as agent_cli
from worker.agent import platform_trust
from worker.agent import state as state_mod


@pytest.fixture(scope="module")
def cas():
    return tls_server.Authority.make("platform CA"), tls_server.Authority.make("attacker CA")


def _resolve(url, state_dir, **kw):
    args = {"fingerprint": None, "trust_on_first_use": False, "insecure": False, **kw}
    return platform_trust.resolve(url, state_dir, sleep=lambda s: None, **args)


def test_enrollment_pins_the_ca_of_the_fingerprint_and_later_starts_use_it(tmp_path, cas):
    platform_ca, attacker_ca = cas
    fingerprint = client_tls.fingerprint(platform_ca.ca_pem)
    with tls_server.running(platform_ca) as server:
        trust = _resolve(server.url, tmp_path, fingerprint=fingerprint)
        assert trust.ca_pem == platform_ca.ca_pem
        machine_json = tmp_path / state_mod.STATE_FILE
        assert stat.S_IMODE(machine_json.stat().st_mode) == 0o600
        assert json.loads(machine_json.read_text())["platform_ca"] == platform_ca.ca_pem
        with dcluster.Client(server.url, trust=trust) as client:
            assert client.healthz()

        later = _resolve(server.url, tmp_path)  # no flag: the pinned CA
        assert later.ca_pem == platform_ca.ca_pem
        server.serve(attacker_ca, published_ca=platform_ca.ca_pem)  # someone else at the platform's address
        with dcluster.Client(server.url, trust=later) as client:
            with pytest.raises(dcluster.UntrustedPlatform, match=fingerprint):
                client.login("prov1", "password123")


def test_a_wrong_fingerprint_is_refused_and_pins_nothing(tmp_path, cas):
    platform_ca, attacker_ca = cas
    with tls_server.running(attacker_ca) as attacker:
        with pytest.raises(dcluster.UntrustedPlatform) as refused:
            _resolve(attacker.url, tmp_path, fingerprint=client_tls.fingerprint(platform_ca.ca_pem))
    assert client_tls.fingerprint(platform_ca.ca_pem) in str(refused.value)
    assert client_tls.fingerprint(attacker_ca.ca_pem) in str(refused.value)
    assert state_mod.MachineState(tmp_path).platform_ca is None


def test_trust_on_first_use_only_when_told(tmp_path, cas):
    platform_ca, _ = cas
    with tls_server.running(platform_ca) as server:
        assert _resolve(server.url, tmp_path).ca_pem is None  # the system's store: pins nothing
        assert state_mod.MachineState(tmp_path).platform_ca is None
        assert _resolve(server.url, tmp_path, trust_on_first_use=True).ca_pem == platform_ca.ca_pem
        assert state_mod.MachineState(tmp_path).platform_ca == platform_ca.ca_pem


def test_plain_http_to_another_machine_is_refused_unless_insecure(tmp_path):
    with pytest.raises(dcluster.InsecureTransport, match="--insecure"):
        _resolve("http://10.0.0.5:8000", tmp_path)
    assert _resolve("http://10.0.0.5:8000", tmp_path, insecure=True) == dcluster.Trust()
    assert _resolve("http://127.0.0.1:8000", tmp_path) == dcluster.Trust()
    with pytest.raises(ValueError, match="plain HTTP"):
        _resolve("http://127.0.0.1:8000", tmp_path, fingerprint="SHA256:" + "0" * 64)


def test_the_agent_cli_refuses_plain_http_to_another_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(agent_cli.PASSWORD_ENV, "password123")
    argv = ["--platform-url", "http://10.0.0.5:8000", "--username", "prov1", "--state-dir", str(tmp_path)]
    argv += ["--price-per-gpu-hour", "0", "--price-per-cpu-hour", "0", "--runtime", "none", domain.UNSANDBOXED_FLAG]
    with pytest.raises(SystemExit) as exited:
        agent_cli.main(argv)
    assert exited.value.code == 2 and "plain HTTP to another machine" in capsys.readouterr().err
