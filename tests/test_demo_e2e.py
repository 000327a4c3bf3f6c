"""The main job end to end: separate processes on loopback, every mode, JSON and plot written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_tandem_demo_runs_a_local_cluster(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tandem", "demo", "--problems", "6", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "speculation" in out.stdout and "cloud-only" in out.stdout
    report = json.loads((tmp_path / "demo.json").read_text())
    modes = report["modes"]
    assert set(modes) == {"cloud-only", "edge-only", "speculation"}
    assert modes["speculation"]["accuracy"] == modes["cloud-only"]["accuracy"]  # lossless
    assert modes["speculation"]["mean_accepted_length"] > 1.0
    # The cloud worked in both cloud modes; which costs less per token is a benchmark's question.
    assert modes["speculation"]["cloud_ms_per_token"] > 0.0
    assert modes["cloud-only"]["cloud_ms_per_token"] > 0.0
    assert modes["edge-only"]["cloud_ms_per_token"] == 0.0
    assert all(m["degraded"] == 0 for m in modes.values())
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    logs = list((tmp_path / "nodes").glob("*.log"))
    assert len(logs) == 4  # coordinator, cloud and two edges each ran as a process
    first = (tmp_path / "nodes" / "cloud-0.log").read_text().splitlines()
    assert any(
        json.loads(line).get("event") == "cloud_listening" for line in first if line.startswith("{")
    )


def test_bad_cli_input_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tandem", "demo", "--problems", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "at least one problem" in out.stderr
