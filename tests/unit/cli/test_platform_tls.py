"""The platform's TLS: its own CA made once (key 0600) and a server certificate for the public host, reused by
later `up`s; an operator's certificate; the public URL chosen once and kept; what the Serve app is given."""

from __future__ import annotations

import socket
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from actors import settings as settings_mod
from cli import main as cli_main
from cli.platform import public, serve_deploy, state, tls, up_result
from cli.platform.errors import PlatformError
from dcluster import tls as client_tls
from tests import tls_server


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in sans.get_values_for_type(x509.DNSName) + sans.get_values_for_type(x509.IPAddress)}


def _handshake_ok(files: tls.TlsFiles, server_name: str) -> bool:
    """A TLS client that trusts only the pinned CA accepts the server certificate for server_name."""
    authority = tls_server.Authority(files.ca_file.read_text(), files.certfile.read_text(), files.keyfile.read_text())
    with tls_server.running(authority) as server:
        context = client_tls.Trust(ca_pem=files.ca_file.read_text()).verify()
        with socket.create_connection(("127.0.0.1", server.server_address[1])) as sock:
            try:
                with context.wrap_socket(sock, server_hostname=server_name):
                    return True
            except ssl.SSLCertVerificationError:
                return False


def test_the_platform_makes_its_ca_once_and_a_server_certificate_for_its_public_host(tmp_path):
    tls_dir = tls.TlsDir(tmp_path / "tls")
    files = tls.own_ca_files(tls_dir, "platform.example.com")
    assert files.own_ca and files.ca_file == tls_dir.ca_cert
    assert _mode(tls_dir.path) == 0o700 and _mode(tls_dir.ca_key) == 0o600 and _mode(tls_dir.server_key) == 0o600
    assert _sans(files.certfile) == {"platform.example.com", "127.0.0.1", "::1", "localhost"}
    ca = x509.load_pem_x509_certificate(tls_dir.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert files.fingerprint == client_tls.fingerprint(tls_dir.ca_cert.read_text())
    assert _handshake_ok(files, "platform.example.com") and _handshake_ok(files, "127.0.0.1")
    assert not _handshake_ok(files, "other.example.com")

    server_pem = files.certfile.read_bytes()
    again = tls.own_ca_files(tls_dir, "platform.example.com")  # a later `up`: the same CA and certificate
    assert again == files and files.certfile.read_bytes() == server_pem

    moved = tls.own_ca_files(tls_dir, "198.51.100.7")  # a new public address: same CA, a new certificate
    assert moved.fingerprint == files.fingerprint and files.certfile.read_bytes() != server_pem
    assert "198.51.100.7" in _sans(moved.certfile) and _handshake_ok(moved, "198.51.100.7")


def test_an_operators_certificate_is_checked_and_its_chain_top_pinned(tmp_path):
    authority = tls_server.Authority.make("operator CA", host="platform.example.com")
    cert, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.write_text(authority.cert_pem)
    key.write_text(authority.key_pem)
    key.chmod(0o644)
    with pytest.raises(PlatformError, match="chmod 600"):
        tls.operator_files(cert, key, tls.TlsDir(tmp_path / "tls"))
    key.chmod(0o600)
    files = tls.operator_files(cert, key, tls.TlsDir(tmp_path / "tls"))
    assert not files.own_ca and files.fingerprint == client_tls.fingerprint(authority.ca_pem)
    other = tls_server.Authority.make("another")
    key.write_text(other.key_pem)
    with pytest.raises(PlatformError, match="do not load as a pair"):
        tls.operator_files(cert, key, tls.TlsDir(tmp_path / "tls"))
    with pytest.raises(PlatformError, match="not found"):
        tls.operator_files(tmp_path / "missing.pem", key, tls.TlsDir(tmp_path / "tls"))


def _prepare(layout, **kw):
    args = dict(
        requested_url=None,
        recorded=None,
        template_url=None,
        host="127.0.0.1",
        port=8000,
        tls_cert=None,
        tls_key=None,
        insecure=False,
    )
    return public.prepare(layout, **{**args, **kw})


def test_the_public_url_defaults_to_the_local_address_and_plain_http(tmp_path):
    endpoint = _prepare(state.Layout(tmp_path))
    assert endpoint == public.Endpoint("http://127.0.0.1:8000", None)
    assert public.serve_settings(endpoint) == {"api_url": "http://127.0.0.1:8000"}
    # Not kept: a later `up --port 8100` hands out its own local address.
    assert endpoint.to_record() == {"public_url": None, "tls": None, "insecure": False}
    assert _prepare(state.Layout(tmp_path), recorded=endpoint.to_record(), port=8100).url == "http://127.0.0.1:8100"


def test_an_https_public_url_gets_tls_and_the_serve_app_its_files(tmp_path):
    layout = state.Layout(tmp_path)
    endpoint = _prepare(layout, requested_url="https://127.0.0.1:8443/", host="0.0.0.0", port=8443)
    assert endpoint.url == "https://127.0.0.1:8443" and endpoint.tls is not None and endpoint.tls.own_ca
    app_args = {"state_dir": str(tmp_path), **public.serve_settings(endpoint)}
    settings = settings_mod.PlatformSettings.model_validate(app_args)  # the app accepts them
    assert (
        settings.api_url == "https://127.0.0.1:8443"
        and settings.tls_ca_pem() == layout.tls_dir.joinpath("ca.pem").read_text()
    )


def test_the_recorded_public_url_outlives_a_restart_and_serve_yamls_api_url_counts(tmp_path):
    layout = state.Layout(tmp_path)
    recorded = {"public_url": "https://platform.example.com:8443"}
    assert _prepare(layout, recorded=recorded).url == "https://platform.example.com:8443"
    assert _prepare(layout, template_url="https://from-yaml.example.com").url == "https://from-yaml.example.com"
    assert _prepare(layout, requested_url="https://new.example.com", recorded=recorded).url == "https://new.example.com"


def test_plain_http_to_other_machines_needs_insecure(tmp_path):
    layout = state.Layout(tmp_path)
    with pytest.raises(PlatformError, match="--insecure"):
        _prepare(layout, requested_url="http://10.0.0.5:8000", host="0.0.0.0")
    accepted = _prepare(layout, requested_url="http://10.0.0.5:8000", host="0.0.0.0", insecure=True)
    assert accepted.tls is None and accepted.to_record()["insecure"]
    assert _prepare(layout, recorded=accepted.to_record(), host="0.0.0.0").url == "http://10.0.0.5:8000"  # a restart


@pytest.mark.parametrize(
    "url", ["platform.example.com", "https://platform.example.com/api", "https://h:99999", "ftp://h", "https://"]
)
def test_a_malformed_public_url_is_refused_naming_the_form(url):
    with pytest.raises(PlatformError, match="--public-url"):
        public.check_url(url)


def test_serve_config_keeps_an_operators_api_url_unless_up_names_one(tmp_path):
    text = (
        "applications:\n  - name: x\n    import_path: serve_app.app:build_app\n"
        "    args: {api_url: 'https://platform.example.com'}\n"
    )
    assert serve_deploy.template_api_url(text) == "https://platform.example.com"
    config = serve_deploy.patch_serve_config(text, host="0.0.0.0", port=9, state_dir=tmp_path, heartbeat_interval_s=2)
    assert config["applications"][0]["args"]["api_url"] == "https://platform.example.com"
    assert serve_deploy.template_api_url(serve_deploy.SERVE_TEMPLATE.read_text()) is None


def test_local_calls_trust_the_recorded_ca_and_the_public_name_of_an_operators_certificate(tmp_path):
    layout = state.Layout(tmp_path)
    files = tls.own_ca_files(tls.TlsDir(layout.tls_dir), "platform.example.com")
    record = {"host": "0.0.0.0", "port": 8443, "public_url": "https://platform.example.com", "tls": files.to_record()}
    assert state.api_url(record) == "https://127.0.0.1:8443" and state.public_url(record) == record["public_url"]
    assert state.local_trust(record) == client_tls.Trust(ca_pem=files.ca_file.read_text())
    operator = {**record, "tls": {**files.to_record(), "own_ca": False}}
    assert state.local_trust(operator).server_name == "platform.example.com"
    assert state.tls_fingerprint(record) == files.fingerprint and state.tls_fingerprint({"host": "h"}) is None


def test_settings_refuse_half_a_tls_configuration(tmp_path):
    with pytest.raises(ValueError, match="go together"):
        settings_mod.PlatformSettings(state_dir=tmp_path, tls_certfile=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="needs tls_certfile"):
        settings_mod.PlatformSettings(state_dir=tmp_path, tls_ca_file=tmp_path / "ca.pem")


def test_up_and_status_print_the_fingerprint_and_how_to_sign_in(tmp_path):
    files = tls.own_ca_files(tls.TlsDir(tmp_path / "tls"), "platform.example.com")
    record = {
        "host": "0.0.0.0",
        "port": 8443,
        "public_url": "https://platform.example.com:8443",
        "tls": files.to_record(),
        "ray_ports": {"dashboard": 8265},
    }
    lines = "\n".join(up_result.of(record, state.Layout(tmp_path), already_running=False, timings={}).lines())
    assert "platform is up: https://platform.example.com:8443" in lines
    assert f"TLS CA fingerprint: {files.fingerprint}" in lines
    assert f"dcluster login --url https://platform.example.com:8443 --fingerprint {files.fingerprint}" in lines
    status = {
        "status": "running",
        "api_url": "https://127.0.0.1:8443",
        "healthz": True,
        "public_url": record["public_url"],
        "tls_fingerprint": files.fingerprint,
        "state_dir": str(tmp_path),
        "ray_gcs_address": "127.0.0.1:1",
        "temp_dir": "/tmp/x",
        "head_processes": [],
        "agents": [],
    }
    shown = "\n".join(cli_main.format_status(status))
    assert "public URL: https://platform.example.com:8443" in shown and files.fingerprint in shown
