"""`dcluster login` pins the platform's certificate authority by fingerprint and every later command checks the
server against it; a wrong fingerprint, another certificate, or plain HTTP to another machine is refused with a
clear error. Against a real TLS server on 127.0.0.1, a second CA as the attacker."""

from __future__ import annotations

import json
import stat

import pytest

from cli import main as cli_main
from dcluster import tls as client_tls
from tests import tls_server


@pytest.fixture(scope="module")
def cas():
    return tls_server.Authority.make("platform CA"), tls_server.Authority.make("attacker CA")


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("DCLUSTER_CONFIG_DIR", str(tmp_path / "cfg"))
    for var in ("DCLUSTER_URL", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DCLUSTER_PASSWORD", "password123")
    return tmp_path / "cfg"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_login_pins_the_fingerprint_and_later_commands_refuse_another_certificate(cfg, cas, capsys):
    platform_ca, attacker_ca = cas
    fingerprint = client_tls.fingerprint(platform_ca.ca_pem)
    with tls_server.running(platform_ca) as server:
        code, out, err = run(capsys, "login", "--url", server.url, "--username", "alice", "--fingerprint", fingerprint)
        assert code == 0, err
        assert f"certificate authority {fingerprint} pinned" in out
        session = cfg / "session.json"
        assert stat.S_IMODE(session.stat().st_mode) == 0o600
        assert json.loads(session.read_text())["ca_pem"] == platform_ca.ca_pem

        code, out, err = run(capsys, "cluster", "list", "--json")
        assert code == 0, err
        assert json.loads(out) == []

        server.serve(attacker_ca, published_ca=platform_ca.ca_pem)  # another server takes the address
        seen = len(server.requests)
        code, out, err = run(capsys, "cluster", "list")
        assert code == 1
        assert f"pinned certificate authority {fingerprint}" in err
        assert f"got {client_tls.fingerprint(attacker_ca.cert_pem)}" in err
        assert server.requests[seen:] == []  # the session's token never reached it

        code, _, err = run(capsys, "login", "--username", "alice")  # a new login keeps the pin
        assert code == 1 and "pinned certificate authority" in err


def test_a_wrong_fingerprint_is_refused_naming_expected_and_got(cfg, cas, capsys):
    platform_ca, attacker_ca = cas
    with tls_server.running(attacker_ca) as attacker:
        expected = client_tls.fingerprint(platform_ca.ca_pem)
        code, _, err = run(capsys, "login", "--url", attacker.url, "--username", "alice", "--fingerprint", expected)
        assert attacker.requests == ["GET /v1/tls/ca.pem"]  # never the password
    assert code == 1 and f"expected its certificate authority {expected}" in err
    assert f"got {client_tls.fingerprint(attacker_ca.ca_pem)}" in err
    assert not (cfg / "session.json").exists()


def test_without_a_fingerprint_the_platforms_own_ca_is_refused_unless_trusted_on_first_use(cfg, cas, capsys):
    platform_ca, _ = cas
    with tls_server.running(platform_ca) as server:
        code, _, err = run(capsys, "login", "--url", server.url, "--username", "alice")
        assert code == 1 and "--fingerprint" in err
        code, out, err = run(capsys, "login", "--url", server.url, "--username", "alice", "--trust-on-first-use")
        assert code == 0, err
        assert client_tls.fingerprint(platform_ca.ca_pem) in err  # printed, to compare with the operator's
    code, _, err = run(capsys, "login", "--url", server.url, "--fingerprint", "SHA256:nope")
    assert code == 2 and "not a certificate fingerprint" in err


def test_plain_http_to_another_machine_is_refused_unless_insecure(cfg, capsys):
    code, _, err = run(capsys, "login", "--url", "http://10.0.0.5:8000", "--username", "alice")
    assert code == 2 and "plain HTTP to another machine" in err and "--insecure" in err
