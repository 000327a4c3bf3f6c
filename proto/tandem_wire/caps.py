"""Caps every Tandem gRPC server and client applies, both ways: part of the contract."""

from __future__ import annotations

from typing import Any

# A draft round is a few KB, so 4 MiB is generous and bounded.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Keepalive: a peer that stops answering (frozen, or behind a link that delivers nothing) is
# found within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS of the last ping it answered (< 5 s), and
# the calls on its connection fail UNAVAILABLE instead of waiting for their deadlines. Servers and
# clients share these options, so the server's ping policy must admit the client's pings: it
# accepts a ping every second even on a connection with no data, and counts no strikes (the
# default policy answers a client pinging more often than every 5 minutes with GOAWAY
# too_many_pings).
KEEPALIVE_TIME_MS = 1_500
KEEPALIVE_TIMEOUT_MS = 2_000
GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC >= 1.6x times a keepalive ping's ack with the ping timeout (60 s by default), not
    # keepalive_timeout_ms: both are set, or a frozen peer is found only after a minute
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that is quiet
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),  # server: pings it accepts
    ("grpc.http2.max_ping_strikes", 0),  # server: never GOAWAY a pinging peer
]
DEFAULT_DEADLINE_S = 30.0
