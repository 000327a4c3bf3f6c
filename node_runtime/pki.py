"""Certificates for mTLS between nodes: one CA, and node certificates that carry the node's id.

ECDSA P-256 throughout (a key in milliseconds, so certificates made on first use cost nothing
noticeable). A node certificate serves both ends of a connection (serverAuth and clientAuth): the
node's id is its common name and a SAN URI ``urn:tandem:node:<id>`` (percent-encoded), and its IP
and DNS SANs name the addresses it is dialled at, since gRPC checks the dialled host against them.
Pure functions over bytes and paths; the state directory and its locking live in
``node_runtime.security``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_URI_PREFIX = "urn:tandem:node:"
DEFAULT_DNS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")
CA_DAYS = 3650
NODE_DAYS = 825


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def utc_now() -> dt.datetime:
    """The current time, in UTC (certificate validity is in UTC)."""
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(name: str = "Tandem cluster CA", days: int = CA_DAYS) -> KeyPair:
    """A self-signed CA that may sign node certificates (and nothing below them)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = utc_now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def node_uri(node_id: str) -> str:
    """The SAN URI that names ``node_id`` in a certificate."""
    return NODE_URI_PREFIX + quote(node_id, safe="")


def make_node_cert(
    ca: KeyPair,
    node_id: str,
    ips: Iterable[str] = DEFAULT_IPS,
    dns: Iterable[str] = DEFAULT_DNS,
    days: int = NODE_DAYS,
) -> KeyPair:
    """A certificate for ``node_id`` signed by ``ca``, valid for the given IPs and DNS names."""
    if not node_id:
        raise ValueError("node_id must be non-empty")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(node_id))]
    names += [x509.DNSName(d) for d in dict.fromkeys(dns)]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
    now = utc_now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class CertInfo:
    """What a peer's certificate says about it."""

    node_id: str  # from the SAN URI, else the common name; "" when neither
    fingerprint: str  # sha256 of the DER certificate, hex
    ips: frozenset[str]
    dns: frozenset[str]
    not_after: dt.datetime


def cert_info(cert_pem: bytes) -> CertInfo:
    """Parse a PEM certificate into the fields Tandem checks."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    node_id = next(
        (unquote(u[len(NODE_URI_PREFIX) :]) for u in uris if u.startswith(NODE_URI_PREFIX)), ""
    )
    if not node_id:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        node_id = str(cns[0].value) if cns else ""
    return CertInfo(
        node_id=node_id,
        fingerprint=hashlib.sha256(der).hexdigest(),
        ips=frozenset(str(i) for i in san.get_values_for_type(x509.IPAddress)),
        dns=frozenset(san.get_values_for_type(x509.DNSName)),
        not_after=cert.not_valid_after_utc,
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only (0600), whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def load_pair(cert: Path, key: Path) -> KeyPair:
    """Read a certificate and its key from files."""
    return KeyPair(cert.read_bytes(), key.read_bytes())


def save_pair(pair: KeyPair, cert: Path, key: Path) -> None:
    """Write a certificate and key, both 0600."""
    write_private(key, pair.key_pem)
    write_private(cert, pair.cert_pem)
