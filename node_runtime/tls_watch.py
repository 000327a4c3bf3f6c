"""Why a TLS client was refused, in the server's own log.

A failed TLS handshake never reaches Python: the client sees only UNAVAILABLE, and gRPC's C core
notes the reason at INFO level on file descriptor 2 (``Handshake failed with error SSL_ERROR_SSL:
... PEER_DID_NOT_RETURN_A_CERTIFICATE``). ``watch_tls_failures`` lowers the core's verbosity to
INFO (only if ``GRPC_VERBOSITY`` is unset, and only effective before the first channel or server
of the process), puts a pipe on descriptor 2 and turns each handshake failure into a JSON log line
``tls_handshake_refused`` with the reason in words. The core's other INFO lines are dropped;
warnings, errors and anything not from gRPC pass through unchanged. Python's own ``sys.stderr``
keeps writing to the original descriptor, so the process's logs are not delayed.

For server processes (``setup_logging`` installs it when the process's security is TLS). Not in
a process whose descriptor 2 is managed by someone else, such as a test runner capturing output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

from node_runtime.serving import log_event

log = logging.getLogger("node_runtime.tls")

_GRPC_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ (\S+)\] (.*)$")
_HANDSHAKE = re.compile(rb"Handshake failed with (?:fatal )?error (\S+?):? (.*)")
# What the OpenSSL reason means for an operator; the raw reason is logged too.
REASONS = {
    "WRONG_VERSION_NUMBER": "the client spoke plaintext (or not TLS) to a TLS port",
    "HTTP_REQUEST": "the client spoke plaintext HTTP to a TLS port",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate is not signed by the cluster's CA",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this server's CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected this server's certificate",
    "CERTIFICATE_EXPIRED": "the client's certificate has expired",
}

_lock = threading.Lock()
_installed = False
refused = 0  # handshake failures seen by this process


def explain(line: bytes) -> dict[str, str] | None:
    """The fields of a ``tls_handshake_refused`` event for one gRPC core log line, or None."""
    grpc_line = _GRPC_LINE.match(line.rstrip(b"\r\n"))
    text = grpc_line.group(3) if grpc_line else line
    found = _HANDSHAKE.search(text)
    if found is None:
        return None
    detail = found.group(2).decode(errors="replace")
    code = next((k for k in REASONS if k in detail), "")
    reason = REASONS.get(code, "TLS handshake failed")
    return {
        "reason": reason,
        "ssl_error": found.group(1).decode(errors="replace"),
        "detail": detail,
    }


def _pump(read_fd: int, out_fd: int) -> None:
    global refused
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        buffered = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                try:
                    fields = explain(line)
                    if fields is not None:
                        refused += 1
                        log_event(log, "tls_handshake_refused", logging.WARNING, **fields)
                    elif not (_GRPC_LINE.match(line) and line[:1] == b"I"):
                        os.write(out_fd, line + b"\n")
                except Exception:  # noqa: BLE001 - the pump must never stop draining the pipe
                    # a full disk (ENOSPC) drops the line: a dead pump would close the pipe,
                    # and every later refusal would go unlogged even once the disk had room
                    with contextlib.suppress(OSError):
                        os.write(out_fd, line + b"\n")


def watch_tls_failures() -> bool:
    """Log TLS handshake failures of this process's gRPC servers; True once installed."""
    global _installed
    with _lock:
        if _installed:
            return True
        os.environ.setdefault("GRPC_VERBOSITY", "INFO")
        sys.stderr.flush()
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        sys.stderr = open(original, "w", buffering=1, closefd=False)  # noqa: SIM115
        threading.Thread(
            target=_pump, args=(read_fd, original), name="tls-watch", daemon=True
        ).start()
        _installed = True
        return True
