"""The main job end to end: separate processes on loopback, every mode, JSON and plot written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


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


EDGE_DEVICE, CLOUD_DEVICE = "orin-nano-super/smollm2-135m-q4", "h100x2/llama3-70b-fp8"


def test_tandem_demo_under_device_and_link_profiles_says_which_mode_wins(tmp_path: Path) -> None:
    devices = f"{EDGE_DEVICE},{CLOUD_DEVICE}"
    out = subprocess.run(
        [sys.executable, "-m", "tandem", "demo", "--problems", "2", "--edges", "1"]
        + ["--devices", devices, "--link", "wifi", "--pipelined", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    label = f"emulated: {EDGE_DEVICE} -> {CLOUD_DEVICE}, link wifi"
    assert label in out.stdout and "wins on" in out.stdout
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["emulated"] == label
    modes = report["modes"]
    assert set(modes) == {"cloud-only", "edge-only", "speculation", "pipelined", "planned"}
    for lossless in ("speculation", "pipelined", "planned"):
        assert modes[lossless]["accuracy"] == modes["cloud-only"]["accuracy"]
    split = report["split"]
    # the link's round trip and the profile's verify pass are in every speculation round
    for spec in ("speculation", "pipelined"):
        assert split[spec]["network_ms"] > 10.0 and split[spec]["verify_ms"] > 10.0
        assert split[spec]["draft_ms"] > 0.0 and split[spec]["tokens_per_round"] > 1.0
    assert split["cloud-only"]["decode_ms"] > 10.0  # a 70B decode, not the bundled 1 ms one
    assert report["verdict"].split(" wins on ")[0] in {"cloud-only", "speculation", "pipelined"}
    assert any("PIPELINED" in k.upper() for k in modes["pipelined"]["chosen"])
    assert set(report["infeasible_calls"]) and (tmp_path / "demo.png").stat().st_size > 10_000
    cloud_log = (tmp_path / "nodes" / "cloud-0.log").read_text()
    assert CLOUD_DEVICE in cloud_log  # the cloud emulated its profile


def test_demo_profiles_must_name_an_edge_then_a_cloud(tmp_path: Path) -> None:
    for args, why in (
        (["--devices", f"{CLOUD_DEVICE},{EDGE_DEVICE}"], "not an edge profile"),
        (["--devices", EDGE_DEVICE], "EDGE,CLOUD"),
        (["--link", "carrier-pigeon"], "unknown link profile"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "tandem", "demo", *args, "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2 and why in out.stderr, out.stderr[-2000:]


def test_the_split_adds_up_and_the_verdict_names_the_fastest_lossless_mode() -> None:
    from node_runtime.profiles import CallKind, cost_ms, get_profile
    from tandem.demo_split import DEMO_CONTEXT_TOKENS, Emulation, Totals, split, verdict

    emu = Emulation(EDGE_DEVICE, CLOUD_DEVICE, "5g", 36.0)
    verify = cost_ms(get_profile(CLOUD_DEVICE), CallKind.VERIFY, 1, 5, DEMO_CONTEXT_TOKENS)
    # 10 rounds of k = 4 giving 50 tokens; plain rounds take 100 ms, pipelined ones 70 ms
    plain = split("speculation", Totals(2, 50, 1.0, 10, 40, 0.3), emu)
    piped = split("pipelined", Totals(2, 50, 0.7, 10, 40, 0.35), emu)
    assert plain["verify_ms"] == pytest.approx(verify) and plain["network_ms"] == 36.0
    assert plain["draft_ms"] == pytest.approx(30.0) and plain["tokens_per_round"] == 5.0
    assert plain["rest_ms"] == pytest.approx(100.0 - 30.0 - 36.0 - verify)
    assert piped["rest_ms"] == pytest.approx(70.0 - 35.0 - 36.0 - verify)
    assert piped["rest_ms"] < 0  # the round took less than its parts: drafting ahead overlapped
    cloud = split("cloud-only", Totals(2, 50, 1.2, 0, 0, 0.0), emu)
    edge = split("edge-only", Totals(2, 50, 0.2, 0, 0, 0.2), emu)
    splits = {"cloud-only": cloud, "edge-only": edge, "speculation": plain, "pipelined": piped}
    text = verdict(splits, emu)
    assert text.startswith("pipelined wins on ") and "1.43x faster than speculation" in text
    assert "Edge-only is faster still" in text  # 4 ms/token, but below target quality
