"""The API's TLS material: a certificate authority the platform makes once, a server certificate for its public
host (and this machine's loopback names), or an operator's own certificate; and the fingerprint clients pin."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cli.platform.errors import PlatformError
from dcl_core import secret_files
from dcluster import tls as client_tls

CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for a server certificate
RENEW_WITHIN_DAYS = 30  # an `up` this close to the server certificate's end issues a new one
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")  # `up` and `status` reach the API on this machine


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """What the API serves (certfile, keyfile) and the certificate clients pin (ca_file), with its fingerprint."""

    certfile: Path
    keyfile: Path
    ca_file: Path
    fingerprint: str
    own_ca: bool  # made by the platform (its server certificate names 127.0.0.1); else an operator's

    def to_record(self) -> dict:
        return {
            "certfile": str(self.certfile),
            "keyfile": str(self.keyfile),
            "ca_file": str(self.ca_file),
            "fingerprint": self.fingerprint,
            "own_ca": self.own_ca,
        }

    @classmethod
    def from_record(cls, data: dict) -> TlsFiles:
        return cls(
            certfile=Path(data["certfile"]),
            keyfile=Path(data["keyfile"]),
            ca_file=Path(data["ca_file"]),
            fingerprint=data["fingerprint"],
            own_ca=bool(data["own_ca"]),
        )


@dataclasses.dataclass(frozen=True)
class TlsDir:
    """<state dir>/tls: the platform's own CA (key 0600) and its current server certificate (key 0600)."""

    path: Path

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.path / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.path / "server.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def san_entries(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for names (host names or addresses), signed by the CA."""
    key = _new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _covers(cert: x509.Certificate, names: list[str]) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(san_entries(names)) <= set(sans)


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_WITHIN_DAYS)


def own_ca_files(tls_dir: TlsDir, public_host: str) -> TlsFiles:
    """The platform's own CA (made at the first `up`, kept after) and a server certificate for public_host and
    this machine's loopback names, issued again only when it lacks a name, nears its end or the CA changed."""
    secret_files.ensure_private_dir(tls_dir.path)
    if tls_dir.ca_cert.exists() and tls_dir.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(tls_dir.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(tls_dir.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise PlatformError(f"{tls_dir.ca_key} is not the platform CA's key; move {tls_dir.path} away to make one")
        ca_key = loaded
    else:
        ca_cert, ca_key = make_ca(f"dcluster platform CA ({public_host})")
        secret_files.write_secret_file(tls_dir.ca_key, key_pem(ca_key))  # the key first: a cert without it is moot
        secret_files.write_secret_file(tls_dir.ca_cert, cert_pem(ca_cert))
    names = [public_host, *LOOPBACK_NAMES]
    current = None
    if tls_dir.server_cert.exists() and tls_dir.server_key.exists():
        current = x509.load_pem_x509_certificate(tls_dir.server_cert.read_bytes())
    if current is None or current.issuer != ca_cert.subject or not _covers(current, names) or not _fresh(current):
        cert, key = make_server_cert(ca_cert, ca_key, names)
        secret_files.write_secret_file(tls_dir.server_key, key_pem(key))
        secret_files.write_secret_file(tls_dir.server_cert, cert_pem(cert) + cert_pem(ca_cert))
    ca_pem = tls_dir.ca_cert.read_text()
    return TlsFiles(
        certfile=tls_dir.server_cert,
        keyfile=tls_dir.server_key,
        ca_file=tls_dir.ca_cert,
        fingerprint=client_tls.fingerprint(ca_pem),
        own_ca=True,
    )


def operator_files(certfile: Path, keyfile: Path, tls_dir: TlsDir) -> TlsFiles:
    """An operator's certificate chain (leaf first) and key, checked to load together; clients pin the top of
    the chain (kept as <tls dir>/pinned.pem, the file the API publishes)."""
    certfile, keyfile = Path(certfile).expanduser().absolute(), Path(keyfile).expanduser().absolute()
    for path in (certfile, keyfile):
        if not path.is_file():
            raise PlatformError(f"{path} not found: --tls-cert and --tls-key name PEM files")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        top = client_tls.last_certificate(certfile.read_text())
    except (ssl.SSLError, ValueError) as exc:
        raise PlatformError(f"--tls-cert {certfile} and --tls-key {keyfile} do not load as a pair: {exc}") from None
    if keyfile.stat().st_mode & 0o077:
        raise PlatformError(f"--tls-key {keyfile} is readable by other users; chmod 600 it")
    secret_files.ensure_private_dir(tls_dir.path)
    pinned = tls_dir.path / "pinned.pem"
    secret_files.write_secret_file(pinned, top)
    return TlsFiles(
        certfile=certfile, keyfile=keyfile, ca_file=pinned, fingerprint=client_tls.fingerprint(top), own_ca=False
    )
