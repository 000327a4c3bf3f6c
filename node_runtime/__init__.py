"""The runtime every Tandem node shares, between the wire contract and the node packages.

Registration and heartbeats (``agent``), the node lifecycle (``lifecycle``), structured logs,
servers and channels (``serving``), and the ZeroMQ telemetry transport (``telemetry``).
Security, on by default: modes and the state directory (``security``), certificates (``pki``),
the token interceptor (``auth``), telemetry CURVE keys and ZAP (``curve``), and the log of refused
TLS handshakes (``tls_watch``); see docs/security.md.
"""
