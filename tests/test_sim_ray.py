"""A sweep on a local Ray instance gives the same figures as the same sweep in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.fleet.ray_runner import ray_runner
from simulations.fleet.sweep import load_sweep, run_sweep

ray = pytest.importorskip("ray", reason="Ray is an optional extra")

SWEEP = """
title = "ray"
repeats = 2
[base]
devices = 6
clouds = 1
link = "lte"
new_tokens = 24
duration_s = 60.0
[base.arrivals]
rate_per_device = 0.1
[sweep]
mode = ["cloud-only", "speculation", "pipelined"]
"""


def test_ray_sweep_equals_in_process(tmp_path: Path) -> None:
    path = tmp_path / "ray.toml"
    path.write_text(SWEEP)
    sweep = load_sweep(path)
    here = run_sweep(sweep, progress=False)
    there = run_sweep(sweep, ray_runner("local", num_cpus=2), progress=False)
    assert not ray.is_initialized()  # the runner shut down what it started
    assert [c["label"] for c in here["cells"]] == [c["label"] for c in there["cells"]]
    for a, b in zip(here["cells"], there["cells"], strict=True):
        for key in ("latency_p50_s", "latency_p95_s", "requests", "cloud_utilization"):
            assert a["figures"][key]["median"] == b["figures"][key]["median"], (a["label"], key)
        assert [r["rounds"] for r in a["runs"]] == [r["rounds"] for r in b["runs"]]
