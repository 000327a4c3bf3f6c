"""``tandem link`` commands: profiles table, a short check, and ``run`` as a real process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from simulations.link.cli import add_parser, main
from simulations.link.profiles import PROFILES

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]


def test_profiles_table_lists_every_profile(capsys) -> None:
    assert main(["profiles", "--sources"]) == 0
    out = capsys.readouterr().out
    for name, profile in PROFILES.items():
        assert name in out and profile.source in out
    assert main(["profiles", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(PROFILES)


def test_add_parser_wires_a_link_subcommand(capsys) -> None:
    parser = argparse.ArgumentParser(prog="tandem")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["link", "profiles"])
    assert args.func(args) == 0
    assert "congested-lte" in capsys.readouterr().out


def test_check_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "check.json"
    rc = main(
        ["check", "--samples", "8", "--transfer-s", "0.3", "--tolerance", "0.3", "--json", str(out)]
    )
    table = capsys.readouterr().out
    assert rc == 0, table
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["measurements"]] == ["rtt_ms", "uplink_mbit", "downlink_mbit"]
    assert "within 10%" in table


def test_check_unknown_profile_is_a_usage_error(capsys) -> None:
    assert main(["check", "--profile", "dialup"]) == 2
    assert "known: loopback" in capsys.readouterr().err


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_run_forwards_and_stops_on_sigint() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulations.link",
            "run",
            "--upstream",
            upstream,
            "--latency-ms",
            "20",
            "--stats-every",
            "0",
            "--duration",
            "30",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event["event"] == "link.listening":
                port = event["port"]
        assert port, proc.stderr.read() if proc.stderr else "no output"
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
            t0 = time.perf_counter()
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            assert time.perf_counter() - t0 >= 0.039  # 2 x 20 ms
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        events = [json.loads(line)["event"] for line in proc.stdout.read().splitlines()]
        assert "link.stopped" in events
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        server.shutdown()
        server.server_close()
