"""The HTTP API's settings: a config dataclass cheap to import (registries and configs hold it)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "TANDEM_API_KEY"


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API of a node (OpenAI-compatible endpoints and /metrics)."""

    # The key itself is never part of a config: configs are logged.
    port: int = -1  # HTTP port of the API and /metrics; -1: not served, 0: a free port
    host: str = "127.0.0.1"  # address to bind; any but loopback needs an API key
    api_key_file: str = ""  # file holding the bearer key clients must send
    api_key_env: str = API_KEY_ENV  # else the environment variable holding it (unset: no key)
    allow_unauthenticated: bool = False  # serve off loopback without a key, knowingly
    max_n: int = 8  # choices per request at most
    max_tokens: int = 4096  # largest max_tokens accepted (the edge caps it further)
    max_body_bytes: int = 1 << 20  # request bodies larger than this get 413
    timeout_s: float = 300.0  # deadline of each generation

    def key(self) -> str:
        """The key in force: the file's, else the environment variable's, else none."""
        if self.api_key_file:
            return Path(self.api_key_file).read_text().strip()
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def check(self, key: str) -> None:
        """ValueError when the API would listen off loopback without a key."""
        if key or self.allow_unauthenticated or is_loopback(self.host):
            return
        raise ValueError(
            f"refusing to serve the API on {self.host} without an API key: set api_key_file "
            f"or ${self.api_key_env}, or allow_unauthenticated to serve it open"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
