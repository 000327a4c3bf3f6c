"""Caps every Tandem gRPC server and client applies, both ways: part of the contract."""

from __future__ import annotations

from typing import Any

# A draft round is a few KB, so 4 MiB is generous and bounded.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
DEFAULT_DEADLINE_S = 30.0
