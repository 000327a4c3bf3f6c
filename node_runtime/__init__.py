"""The runtime every Tandem node shares, between the wire contract and the node packages.

Registration and heartbeats (``agent``), the node lifecycle (``lifecycle``), structured logs,
servers and channels (``serving``), and the ZeroMQ telemetry transport (``telemetry``).
"""
