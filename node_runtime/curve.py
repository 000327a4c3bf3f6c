"""ZeroMQ CURVE for the telemetry plane: keys in the state directory, and a ZAP allowlist.

Roles: the subscriber (the coordinator) is the CURVE *server* and runs the ZAP handler; each
publisher (a node) is a CURVE *client* that knows the subscriber's public key. So

- a publisher sends only to a peer holding the subscriber's secret key (the handshake proves it):
  a process with any other key reads nothing;
- the subscriber takes frames only from keys on the allowlist (the public keys in
  ``<state dir>/curve``, each filed under its node id), and ZAP names the sender: a frame carries
  its publisher's node id as ``User-Id``, and samples in another node's name are dropped.

CURVE alone only encrypts: without a ZAP handler libzmq accepts any client key. Three ways to end
up with no handler that we met or reproduced, and what this module does about each:

1. ZAP is per zmq *context*. ``zmq.Context.instance()`` and ``zmq.asyncio.Context.instance()`` are
   different C contexts, and so is a context made after the old one was terminated; a handler on
   one never sees the handshakes of sockets on another. The handler here is made on the
   subscriber socket's own context, looked up from the socket.
2. A handler that stopped leaves a window with none, and libzmq then lets every key in. Server
   sockets set ``ZAP_ENFORCE_DOMAIN``, so with no handler a handshake fails instead (fail closed).
3. Closing the handler's socket releases ``inproc://zeromq.zap.01`` asynchronously, so a second
   handler bound right after the first stopped can fail with EADDRINUSE. ``ZapHandler.start``
   retries the bind for a bounded time.

One handler per context serves every subscriber on it (reference counted), since the endpoint can
be bound only once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.utils import z85

from node_runtime import security
from node_runtime.pki import write_private
from node_runtime.security import SecurityConfig
from node_runtime.serving import log_event

log = logging.getLogger("node_runtime.curve")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = b"tandem-telemetry"
SUBSCRIBER = "telemetry-subscriber"  # the key pair of the coordinator's telemetry intake


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE key pair, Z85 text (40 bytes each); ``secret`` empty when only the public is held."""

    name: str
    public: bytes
    secret: bytes = b""


def _dir(config: SecurityConfig) -> Path:
    return config.state_dir / "curve"


def _files(config: SecurityConfig, name: str) -> tuple[Path, Path]:
    safe = security.file_name(name)
    return _dir(config) / f"{safe}.pub", _dir(config) / f"{safe}.secret"


def keys(config: SecurityConfig, name: str, need_secret: bool = True) -> CurveKeys:
    """The key pair filed under ``name`` (a node id, or ``SUBSCRIBER``); made on first use in auto
    mode. ``need_secret=False`` accepts a public key alone (a peer's)."""
    pub, sec = _files(config, name)
    if config.mode == "auto" and not (pub.is_file() and sec.is_file()):
        with security._locked(config.state_dir):
            if not (pub.is_file() and sec.is_file()):
                public, secret = zmq.curve_keypair()
                record = {"name": name, "public": public.decode()}
                write_private(sec, json.dumps({**record, "secret": secret.decode()}).encode())
                pub.write_text(json.dumps(record))
    wanted = sec if need_secret else pub
    if not wanted.is_file():
        raise security.SecurityError(
            f"{wanted} is missing: telemetry under security mode {config.mode!r} needs it "
            "(`tandem certs` makes it)"
        )
    record = json.loads(wanted.read_text())
    return CurveKeys(name, record["public"].encode(), record.get("secret", "").encode())


def allowlist(config: SecurityConfig) -> dict[bytes, str]:
    """Public key -> node id for every node key in the state directory (not the subscriber's)."""
    out: dict[bytes, str] = {}
    if not _dir(config).is_dir():
        return out
    for path in sorted(_dir(config).glob("*.pub")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(path.read_text())
            if record["name"] != SUBSCRIBER:
                out[record["public"].encode()] = str(record["name"])
    return out


def client_socket(sock: zmq.Socket, config: SecurityConfig, node_id: str) -> None:
    """Make ``sock`` (a publisher) a CURVE client of the subscriber, as node ``node_id``."""
    own, server = keys(config, node_id), keys(config, SUBSCRIBER, need_secret=False)
    sock.curve_secretkey, sock.curve_publickey = own.secret, own.public
    sock.curve_serverkey = server.public


def server_socket(sock: zmq.Socket, config: SecurityConfig) -> None:
    """Make ``sock`` (a subscriber) a CURVE server that ZAP must admit every peer of."""
    own = keys(config, SUBSCRIBER)
    sock.curve_server = True
    sock.curve_secretkey, sock.curve_publickey = own.secret, own.public
    sock.zap_domain = DOMAIN
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler: refuse, never accept all


class ZapHandler:
    """The ZAP handler of one zmq context: admits CURVE keys on the allowlists of the state
    directories registered with it, answering with the key's node id as User-Id."""

    _by_context: dict[int, ZapHandler] = {}

    def __init__(self, context: zmq.asyncio.Context) -> None:
        self.context = context
        self.homes: dict[Path, SecurityConfig] = {}
        self.counts = {"allowed": 0, "denied": 0}
        self._keys: dict[bytes, str] = {}
        self._scanned = -1.0
        self._users = 0
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def acquire(cls, context: zmq.asyncio.Context, config: SecurityConfig) -> ZapHandler:
        """The running handler of ``context`` (started on first use), with ``config``'s
        allowlist added; pair with ``release``."""
        handler = cls._by_context.get(context.underlying)
        if handler is None:
            handler = cls(context)
            await handler.start()
            cls._by_context[context.underlying] = handler
        handler.homes[config.state_dir] = config
        handler._scanned = -1.0
        handler._users += 1
        return handler

    async def release(self) -> None:
        """One user fewer; the last one stops the handler."""
        self._users -= 1
        if self._users <= 0:
            ZapHandler._by_context.pop(self.context.underlying, None)
            await self.stop()

    async def start(self, bind_timeout_s: float = 2.0) -> None:
        """Bind the context's ZAP endpoint (retrying while a stopped handler releases it)."""
        deadline = time.monotonic() + bind_timeout_s
        while True:
            sock = self.context.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.bind(ZAP_ENDPOINT)
                break
            except zmq.ZMQError as err:
                sock.close()
                if err.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)
        self._sock = sock
        self._task = asyncio.create_task(self._serve(), name="zap-handler")

    async def stop(self) -> None:
        """Stop answering and unbind; server sockets then refuse new handshakes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
        self._task = self._sock = None

    def node_of(self, key: bytes) -> str | None:
        """The node id of a Z85 public key, or None when it is on no allowlist."""
        if key not in self._keys and time.monotonic() - self._scanned > 0.2:
            # A node that joined after we started: read the directories again (rate limited, so
            # a flood of unknown keys cannot keep us rescanning).
            self._keys = {k: v for c in self.homes.values() for k, v in allowlist(c).items()}
            self._scanned = time.monotonic()
        return self._keys.get(key)

    async def _serve(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            try:
                reply = self._answer(frames)
            except Exception as err:  # noqa: BLE001 - a malformed request is denied, not fatal
                log_event(log, "zap_request_bad", logging.WARNING, error=repr(err))
                reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"bad", b"", b""]
            await self._sock.send_multipart(reply)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        node = None
        if version == b"1.0" and domain == DOMAIN and mechanism == b"CURVE" and len(frames) > 6:
            node = self.node_of(z85.encode(frames[6]))
        if node is None:
            self.counts["denied"] += 1
            log_event(
                log,
                "telemetry_peer_refused",
                logging.WARNING,
                address=address.decode(errors="replace"),
                mechanism=mechanism.decode(errors="replace"),
                reason="key not on the allowlist" if mechanism == b"CURVE" else "not CURVE",
            )
            return [b"1.0", request_id, b"400", b"key not allowed", b"", b""]
        self.counts["allowed"] += 1
        return [b"1.0", request_id, b"200", b"OK", node.encode(), b""]
