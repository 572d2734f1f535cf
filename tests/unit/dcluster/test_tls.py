"""Pinning the platform's certificate authority, against a real TLS server on 127.0.0.1 (and a second CA as the
attacker), and refusing plain HTTP to another machine."""

from __future__ import annotations

import pytest

import dcluster
from dcl_core import api
from dcluster import tls
from tests import tls_server


@pytest.fixture(scope="module")
def platform_ca():
    return tls_server.Authority.make("platform CA")


@pytest.fixture(scope="module")
def attacker_ca():
    return tls_server.Authority.make("attacker CA")


def test_fingerprints_parse_in_openssls_form_and_ours(platform_ca):
    ours = tls.fingerprint(platform_ca.ca_pem)
    assert ours.startswith("SHA256:") and len(ours) == 7 + 64
    digest = ours.removeprefix("SHA256:")
    openssl_style = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    assert tls.parse_fingerprint(openssl_style) == ours
    assert tls.parse_fingerprint(f"sha256:{digest.upper()}") == ours
    for bad in ("", "SHA256:abc", "MD5:" + digest, digest + "00", "SHA256:" + "g" * 64):
        with pytest.raises(ValueError, match="not a certificate fingerprint"):
            tls.parse_fingerprint(bad)


def test_the_right_fingerprint_is_pinned_and_the_platform_answers(platform_ca):
    with tls_server.running(platform_ca) as server:
        pem = tls.fetch_ca(server.url, expected=tls.fingerprint(platform_ca.ca_pem))
        with dcluster.Client(server.url, trust=dcluster.Trust(ca_pem=pem)) as client:
            assert client.healthz()
            assert client.request("GET", "/v1/accounts/me")["role"] == "buyer"


def test_a_wrong_fingerprint_is_refused_naming_expected_and_got(platform_ca, attacker_ca):
    expected = tls.fingerprint(platform_ca.ca_pem)
    with tls_server.running(attacker_ca) as attacker:  # the attacker publishes its own CA
        with pytest.raises(dcluster.UntrustedPlatform) as refused:
            tls.fetch_ca(attacker.url, expected=expected)
    message = str(refused.value)
    assert f"expected its certificate authority {expected}" in message
    assert f"got {tls.fingerprint(attacker_ca.ca_pem)}" in message


def test_a_server_whose_certificate_the_pinned_ca_did_not_issue_is_refused(platform_ca, attacker_ca):
    """The attacker republishes the real CA (it is public) but cannot present a certificate that CA issued."""
    with tls_server.running(attacker_ca, published_ca=platform_ca.ca_pem) as attacker:
        pem = tls.fetch_ca(attacker.url, expected=tls.fingerprint(platform_ca.ca_pem))  # the public CA matches
        with dcluster.Client(attacker.url, trust=dcluster.Trust(ca_pem=pem)) as client:
            with pytest.raises(dcluster.UntrustedPlatform) as refused:
                client.request("POST", "/v1/token", auth=False, data={"username": "alice", "password": "pw"})
        assert attacker.requests == [f"GET {api.TLS_CA_PATH}"]  # the password never reached it
    message = str(refused.value)
    assert f"pinned certificate authority {tls.fingerprint(platform_ca.ca_pem)}" in message
    assert f"got {tls.fingerprint(attacker_ca.cert_pem)}" in message  # the leaf the attacker presented


def test_the_same_address_changing_certificate_after_pinning_is_refused(platform_ca, attacker_ca):
    with tls_server.running(platform_ca) as server:
        trust = dcluster.Trust(ca_pem=tls.fetch_ca(server.url, expected=tls.fingerprint(platform_ca.ca_pem)))
        with dcluster.Client(server.url, trust=trust) as client:
            assert client.healthz()
        server.serve(attacker_ca, published_ca=platform_ca.ca_pem)
        with dcluster.Client(server.url, trust=trust) as client:
            with pytest.raises(dcluster.UntrustedPlatform, match="pinned certificate authority"):
                client.me()
            assert not dcluster.is_transient(dcluster.UntrustedPlatform("x"))


def test_without_a_pin_a_certificate_the_system_does_not_trust_is_refused_with_the_fix(platform_ca):
    with tls_server.running(platform_ca) as server:
        with dcluster.Client(server.url) as client:
            with pytest.raises(dcluster.UntrustedPlatform, match="--fingerprint"):
                client.me()


def test_a_platform_without_its_own_ca_says_so(platform_ca):
    with tls_server.running(platform_ca, published_ca="") as server:
        with pytest.raises(dcluster.UntrustedPlatform, match="answered no certificate"):
            tls.fetch_ca(server.url, expected=None)


@pytest.mark.parametrize(
    "url, insecure, refused",
    [
        ("http://10.0.0.5:8000", False, True),
        ("http://platform.example.com", False, True),
        ("http://10.0.0.5:8000", True, False),
        ("http://127.0.0.1:8000", False, False),
        ("http://localhost:8000", False, False),
        ("http://[::1]:8000", False, False),
        ("https://platform.example.com", False, False),
        ("ftp://platform.example.com", True, True),
    ],
)
def test_plain_http_to_another_machine_is_refused_unless_insecure(url, insecure, refused):
    if refused:
        with pytest.raises(dcluster.InsecureTransport):
            tls.refuse_plain_http(url, insecure=insecure)
    else:
        tls.refuse_plain_http(url, insecure=insecure)


def test_the_refusal_names_the_fix():
    with pytest.raises(dcluster.InsecureTransport) as refused:
        tls.refuse_plain_http("http://10.0.0.5:8000", insecure=False)
    assert "https://" in str(refused.value) and "--insecure" in str(refused.value)
