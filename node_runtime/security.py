"""Secure by default: mTLS and a bearer token between nodes, from one shared state directory.

Modes (``SecurityConfig.mode``):

- ``auto`` (the default): mTLS plus a token on every RPC. The CA, the node certificates and the
  token are made on first use in the state directory, so every process of a local cluster on this
  host finds the same ones without flags.
- ``tls``: the same checks, but nothing is made: the files must exist (``tandem certs`` makes them
  for a cluster that spans hosts). A missing file is an error that names it.
- ``plaintext``: no TLS and no token. Only when asked for explicitly (``TANDEM_SECURITY=plaintext``
  or a config/flag that builds ``SecurityConfig(mode="plaintext")``).

The state directory is ``$TANDEM_HOME``, else ``$XDG_DATA_HOME/tandem``, else
``~/.local/share/tandem``; it is made 0700 and every key and the token 0600. Layout::

    ca.pem ca.key token  nodes/<id>.pem nodes/<id>.key  curve/...  .lock

Whoever can read this directory can act as any node: that is the trust boundary on one host (the
other users of the host cannot). The token and keys are never logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc

from node_runtime import pki

MODES = ("auto", "tls", "plaintext")
SERVER_IDENTITY = "tandem-server"  # the certificate a process serves with
CLIENT_IDENTITY = "tandem-client"  # a caller that is no node (CLI tools, benchmarks)
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
RENEW_BEFORE = dt.timedelta(days=30)  # auto mode makes a node certificate anew this close to expiry


def default_home() -> Path:
    """The state directory: ``$TANDEM_HOME``, else ``$XDG_DATA_HOME/tandem``, else
    ``~/.local/share/tandem``."""
    if os.environ.get("TANDEM_HOME"):
        return Path(os.environ["TANDEM_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "tandem"


@dataclass(frozen=True)
class SecurityConfig:
    """How a process secures its gRPC servers and channels and its telemetry sockets."""

    # "auto": mTLS + token, files made on first use; "tls": the same, files must exist;
    # "plaintext": neither (explicit only).
    mode: str = "auto"
    # The state directory with the CA, certificates, token and CURVE keys; None: default_home().
    home: Path | None = None
    # The bearer token; None: the state directory's ``token`` file (made on first use in auto).
    token: str | None = field(default=None, repr=False)
    # Allows developer conveniences that widen the attack surface (gRPC reflection).
    dev: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("token must be at least 16 characters")

    @property
    def secure(self) -> bool:
        """Whether TLS and the token are in force."""
        return self.mode != "plaintext"

    @property
    def state_dir(self) -> Path:
        """The state directory in use."""
        return self.home if self.home is not None else default_home()


_default: SecurityConfig | None = None


def from_env() -> SecurityConfig:
    """``TANDEM_SECURITY`` (auto|tls|plaintext, default auto) and ``TANDEM_HOME``."""
    mode = os.environ.get("TANDEM_SECURITY", "auto").strip().lower() or "auto"
    return SecurityConfig(mode=mode)


def default() -> SecurityConfig:
    """The process's security: what ``set_default`` set, else ``from_env()``."""
    global _default
    if _default is None:
        _default = from_env()
    return _default


def set_default(config: SecurityConfig | None) -> None:
    """Make ``config`` the process's security (None: back to the environment's)."""
    global _default
    _default = config


class SecurityError(RuntimeError):
    """The security material is missing or unusable; the message says which file and why."""


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    # Several processes of one cluster start at once: one makes the CA, the others wait for it.
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = home.stat().st_mode & 0o777
    if mode & 0o077:  # as ssh does: keys in a directory others can read are not secret
        raise SecurityError(f"{home} is open to other users (mode {mode:o}); chmod 700 it")
    fd = os.open(home / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def file_name(identity: str) -> str:
    """A file name for ``identity``: the id itself when it is a safe name, else a cleaned one
    with a hash of the id, so two ids never share a file (``edge-h:1`` vs ``edge-h_1``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity)[:100]
    if safe == identity and safe and not safe.startswith("."):
        return safe
    return f"{safe.lstrip('.')}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def _require(config: SecurityConfig, path: Path) -> None:
    if not path.is_file():
        raise SecurityError(
            f"{path} is missing: security mode {config.mode!r} needs it "
            "(make it with `tandem certs`, or use mode auto to make it on first use)"
        )


def ca(config: SecurityConfig) -> pki.KeyPair:
    """The cluster's CA, made on first use in auto mode."""
    home = config.state_dir
    cert, key = home / "ca.pem", home / "ca.key"
    if config.mode == "auto" and not (cert.is_file() and key.is_file()):
        with _locked(home):
            if not (cert.is_file() and key.is_file()):
                pki.save_pair(pki.make_ca(), cert, key)
    _require(config, cert)
    # In tls mode a node holds only ca.pem (the CA key stays where certificates are made).
    return pki.KeyPair(cert.read_bytes(), key.read_bytes() if key.is_file() else b"")


def token(config: SecurityConfig) -> str:
    """The bearer token: the config's, else the state directory's (made on first use in auto)."""
    if config.token is not None:
        return config.token
    return _token_file(config.state_dir, config.mode)


@lru_cache(maxsize=16)
def _token_file(home: Path, mode: str) -> str:
    path = home / "token"
    if mode == "auto" and not path.is_file():
        with _locked(home):
            if not path.is_file():
                pki.write_private(path, secrets.token_urlsafe(32).encode())
    if not path.is_file():
        raise SecurityError(f"{path} is missing: security mode {mode!r} needs the cluster's token")
    value = path.read_text().strip()
    if len(value) < 16:
        raise SecurityError(f"{path} holds a token shorter than 16 characters")
    return value


def local_addresses() -> set[str]:
    """This host's own addresses: loopback and what its hostname resolves to."""
    out = set(pki.DEFAULT_IPS)
    with contextlib.suppress(OSError):
        out.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return out


def _host_ips(host: str) -> set[str]:
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return local_addresses()
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        return set()  # a name: it goes into the DNS SANs


def identity(config: SecurityConfig, name: str, hosts: tuple[str, ...] = ()) -> pki.KeyPair:
    """The certificate and key of identity ``name`` (a node id), valid for ``hosts``.

    auto: made on first use, and made again with a wider SAN list when a host is new to it, or
    when it expires within ``RENEW_BEFORE``.
    tls: ``nodes/<name>.pem`` if present, else the host's ``node.pem``; nothing is made.
    """
    home = config.state_dir
    cert, key = (
        home / "nodes" / f"{file_name(name)}.pem",
        home / "nodes" / f"{file_name(name)}.key",
    )
    if config.mode != "auto":
        if not cert.is_file():
            cert, key = home / "node.pem", home / "node.key"
        _require(config, cert)
        _require(config, key)
        return pki.load_pair(cert, key)
    ips = set(pki.DEFAULT_IPS).union(*(_host_ips(h) for h in hosts))
    dns = set(pki.DEFAULT_DNS) | {
        h for h in hosts if h and not _host_ips(h) and h not in WILDCARD_HOSTS
    }
    if any(h.strip("[]") in ("", "0.0.0.0", "::") for h in hosts):
        dns.add(socket.gethostname())
    authority = ca(config)
    with _locked(home):
        if cert.is_file() and key.is_file():
            have = pki.cert_info(cert.read_bytes())
            fresh = have.not_after - pki.utc_now() > RENEW_BEFORE
            if ips <= have.ips and dns <= have.dns and have.node_id == name and fresh:
                return pki.load_pair(cert, key)
            ips |= have.ips
            dns |= have.dns
        pair = pki.make_node_cert(authority, name, sorted(ips), sorted(dns))
        pki.save_pair(pair, cert, key)
        return pair


def server_credentials(config: SecurityConfig, host: str) -> grpc.ServerCredentials:
    """mTLS server credentials for a port on ``host``: client certificates required and checked
    against the cluster's CA."""
    pair = identity(config, SERVER_IDENTITY, (host,))
    return grpc.ssl_server_credentials(
        [(pair.key_pem, pair.cert_pem)],
        root_certificates=ca(config).cert_pem,
        require_client_auth=True,
    )


def channel_credentials(
    config: SecurityConfig, client: str | None = None
) -> grpc.ChannelCredentials:
    """mTLS channel credentials presenting identity ``client`` (a node id; None: a plain client),
    with the token on every call (gRPC sends call credentials only over a secure channel).
    Cached per config and identity: nodes open channels often, and a client certificate never
    needs new SANs."""
    return _channel_credentials(config, client or CLIENT_IDENTITY)


@lru_cache(maxsize=256)
def _channel_credentials(config: SecurityConfig, client: str) -> grpc.ChannelCredentials:
    pair = identity(config, client)
    tls = grpc.ssl_channel_credentials(
        root_certificates=ca(config).cert_pem,
        private_key=pair.key_pem,
        certificate_chain=pair.cert_pem,
    )
    return grpc.composite_channel_credentials(
        tls, grpc.access_token_call_credentials(token(config))
    )


def peer_identity(context: Any) -> pki.CertInfo | None:
    """The verified certificate of the peer of an RPC (``ServicerContext``), None over plaintext."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - a context without one (tests' fakes) has no peer cert
        return None
    pems = auth.get("x509_pem_cert") or []
    return _parse(pems[0]) if pems else None


@lru_cache(maxsize=256)
def _parse(pem: bytes) -> pki.CertInfo:
    return pki.cert_info(pem)


def enable_reflection(
    server: grpc.aio.Server, service_names: list[str], config: SecurityConfig
) -> None:
    """gRPC server reflection, in dev mode only: it lists every method to anyone who connects."""
    if not config.dev:
        raise PermissionError("gRPC reflection is a dev-mode feature (SecurityConfig.dev)")
    from grpc_reflection.v1alpha import reflection  # optional; absent unless installed

    reflection.enable_server_reflection([*service_names, reflection.SERVICE_NAME], server)


def peer_node(context: Any) -> tuple[str, str]:
    """``(node id named by the peer's certificate, its fingerprint)`` for an RPC's context.

    The id is "" for a certificate that names no node (a plain client's or a server's); both are
    "" over plaintext, where nothing binds an id.
    """
    info = peer_identity(context)
    if info is None:
        return "", ""
    named = "" if info.node_id in (CLIENT_IDENTITY, SERVER_IDENTITY) else info.node_id
    return named, info.fingerprint
