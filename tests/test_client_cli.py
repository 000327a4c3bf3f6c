"""`tandem up`, then `tandem generate`, `chat` and `status` against it, all as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from models import task


def _tandem(env: dict[str, str], *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_up_then_generate_chat_status_and_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "TANDEM_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    toml = tmp_path / "cluster.toml"
    toml.write_text('[cluster]\nedges = 1\napi_port = 0\n[edge]\nmodel = "drafter-int8"\n')
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tandem",
            "up",
            "--config",
            str(toml),
            "--workdir",
            str(tmp_path / "run"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state_path = tmp_path / "home" / "up.json"
    try:
        end = time.monotonic() + 120
        while not state_path.exists():
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < end, "tandem up did not come up in 120 s"
            time.sleep(0.1)
        state = json.loads(state_path.read_text())
        p = task.generate(1, task.HELDOUT_SEED)[0]

        out = _tandem(env, "generate", p.question, "--mode", "speculation")
        assert out.returncode == 0, out.stderr
        assert task.is_correct(p, out.stdout.strip())
        assert "speculation on" in out.stderr and "acceptance" in out.stderr

        chat = _tandem(env, "chat", stdin=f"{p.question}\nhello there\n/quit\n")
        assert chat.returncode == 0, chat.stderr
        lines = chat.stdout.splitlines()
        assert any(task.is_correct(p, line.removeprefix("> ")) for line in lines)
        assert any("synthetic arithmetic task" in line for line in lines)  # a clear refusal

        status = _tandem(env, "status", "--once")
        assert status.returncode == 0, status.stderr
        assert "cloud" in status.stdout and "edge" in status.stdout and " ms" in status.stdout

        models = json.loads(urllib.request.urlopen(f"{state['api']}/models", timeout=10).read())
        assert {m["id"] for m in models["data"]} == {"tandem", "drafter-int8"}
        end = time.monotonic() + 15  # the edges' telemetry reaches the coordinator each second
        while True:
            metrics = urllib.request.urlopen(state["metrics"], timeout=10).read().decode()
            if "tandem_node_pair_acceptance_ratio{" in metrics or time.monotonic() > end:
                break
            time.sleep(0.2)
        # generate and both chat turns went through the job API (the refused one too)
        assert "tandem_coordinator_jobs_total 3.0" in metrics
        pair = 'drafter="drafter-int8",node="edge-'
        assert f"tandem_node_pair_acceptance_ratio{{{pair}" in metrics
        assert 'tandem_link_rtt_seconds{node="edge-' in metrics  # the edge's RTT to the cloud
        cloud = urllib.request.urlopen(state["cloud_metrics"], timeout=10).read().decode()
        assert "tandem_target_verify_rounds_total" in cloud
        edge_metrics = state["edge_apis"][0].removesuffix("/v1") + "/metrics"
        assert (
            "tandem_requests_total"
            in urllib.request.urlopen(edge_metrics, timeout=10).read().decode()
        )
        ready = [tmp_path / "run" / f"{n}.ready.json" for n in ("coordinator", "cloud", "edge-0")]
        pids = [json.loads(r.read_text())["pid"] for r in ready]
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
    assert not state_path.exists()
    for pid in pids:  # every node stopped with the cluster
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"node process {pid} outlived tandem up")
