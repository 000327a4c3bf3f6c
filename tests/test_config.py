"""Configs from TOML and flags: flags built from the dataclasses, old names kept, flags win."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from cloud_node.node import CloudConfig
from coordinator.__main__ import add_arguments as coordinator_arguments
from coordinator.registry import CoordinatorConfig
from edge_node.node import EdgeNodeConfig
from node_runtime.config import add_config_args, build, from_args, leaves, load_toml
from node_runtime.kinds import KPolicy, Mode
from tandem.cli import build_parser

CONFIGS = (CoordinatorConfig, CloudConfig, EdgeNodeConfig)


def serve(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_has_help_from_its_comment(cls: type) -> None:
    missing = [leaf.path for leaf in leaves(cls) if not leaf.help]
    assert not missing, f"fields without a comment: {missing}"


@pytest.mark.parametrize(
    ("role", "cls"),
    [("coordinator", CoordinatorConfig), ("cloud", CloudConfig), ("edge", EdgeNodeConfig)],
)
def test_no_flags_give_the_dataclass_defaults(role: str, cls: type) -> None:
    assert from_args(cls, serve(role), role) == cls()


def test_the_flags_of_earlier_versions_still_work() -> None:
    cloud = from_args(
        CloudConfig,
        serve(
            "cloud",
            "--model",
            "target",
            "--threads",
            "2",
            "--max-batch",
            "1",
            "--max-wait-ms",
            "2.5",
            "--generate-batch",
            "3",
            "--device",
            "a100/llama3-8b-bf16",
        ),
        "cloud",
    )
    assert cloud.torch_threads == 2 and cloud.device == "a100/llama3-8b-bf16"
    assert (cloud.engine.max_batch, cloud.engine.max_wait_ms, cloud.engine.generate_batch) == (
        1,
        2.5,
        3,
    )
    edge = from_args(
        EdgeNodeConfig,
        serve(
            "edge",
            "--cloud",
            "a:1",
            "--cloud",
            "b:2",
            "--route",
            "a:1=c:3",
            "--coordinator",
            "k:4",
            "--node-id",
            "e",
        ),
        "edge",
    )
    assert edge.clouds == ("a:1", "b:2") and edge.routes == (("a:1", "c:3"),)
    assert edge.coordinator == "k:4" and edge.node_id == "e"


def test_python_m_coordinator_and_tandem_serve_take_the_same_flags() -> None:
    argv = [
        "--heartbeat-interval",
        "0.5",
        "--missed-heartbeats",
        "2",
        "--max-nodes",
        "9",
        "--port",
        "7001",
        "--api-port",
        "8001",
    ]
    parser = argparse.ArgumentParser()
    coordinator_arguments(parser)
    direct = from_args(CoordinatorConfig, parser.parse_args(argv), "coordinator")
    via_cli = from_args(CoordinatorConfig, serve("coordinator", *argv), "coordinator")
    assert direct == via_cli
    assert (direct.heartbeat_interval_s, direct.missed_heartbeats, direct.max_nodes) == (0.5, 2, 9)
    assert direct.port == 7001 and direct.api.port == 8001


def test_toml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(
        '[edge]\nmodel = "drafter"\nclouds = ["x:1", "y:2"]\nroutes = [["x:1", "z:3"]]\n'
        '[edge.edge]\ndefault_mode = "edge-only"\ndefault_k = 6\n'
        "[edge.edge.reasoning]\nmax_n = 7\n"
        '[edge.api]\nport = 8080\nhost = "0.0.0.0"\n'
    )
    cfg = from_args(
        EdgeNodeConfig,
        serve("edge", "--config", str(path), "--default-k", "3", "--default-k-policy", "rtt"),
        "edge",
    )
    assert cfg.model == "drafter" and cfg.clouds == ("x:1", "y:2")
    assert cfg.routes == (("x:1", "z:3"),)
    assert cfg.edge.default_mode is Mode.EDGE_ONLY  # from the file
    assert cfg.edge.default_k == 3 and cfg.edge.default_k_policy is KPolicy.RTT  # flags win
    assert cfg.edge.reasoning.max_n == 7 and cfg.api.port == 8080 and cfg.api.host == "0.0.0.0"
    assert cfg.edge.k_max == EdgeNodeConfig().edge.k_max  # untouched: the default
    assert load_toml(path)["edge"]["model"] == "drafter"


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"modle": "x"}, "unknown setting modle"),
        ({"port": "80"}, "port: expected int"),
        ({"edge": {"default_mode": "warp"}}, "edge.default_mode"),
        ({"edge": 3}, "edge: expected a table"),
        ({"clouds": "a:1"}, "clouds: expected a list"),
        ({"api": {"porrt": 1}}, "unknown setting api.porrt"),
    ],
)
def test_bad_settings_name_the_setting(table: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build(EdgeNodeConfig, table)


def test_a_setting_is_named_once_per_config() -> None:
    """Nested fields that share a name get their path as their flag, so none shadows another."""
    for cls in CONFIGS:
        parser = argparse.ArgumentParser()
        add_config_args(parser, cls)  # argparse raises on a duplicate flag
        dests = [a.dest for a in parser._actions if a.dest.startswith("cfg.")]
        assert len(dests) == len(set(dests))
    cfg = from_args(EdgeNodeConfig, serve("edge", "--port", "1", "--api-port", "2"), "edge")
    assert (cfg.port, cfg.api.port) == (1, 2)
    assert dataclasses.replace(cfg, port=0, api=EdgeNodeConfig().api) == EdgeNodeConfig()


def test_onnx_providers_come_from_the_config_with_the_cpu_last() -> None:
    from models.providers import CPU, choose

    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert choose(have, ["cuda", "tensorrt"]) == [
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        CPU,
    ]
    assert choose([CPU], ["cuda", "openvino"]) == [CPU]  # not in this build: skipped
    assert choose(have, []) == [CPU] and choose(have, ["cpu", "cuda"]) == [
        "CUDAExecutionProvider",
        CPU,
    ]
    cfg = from_args(EdgeNodeConfig, serve("edge", "--onnx-providers", "cuda"), "edge")
    assert cfg.onnx_providers == ("cuda",)


def test_a_provider_this_machine_lacks_falls_back_to_the_cpu() -> None:
    """The real int8 drafter loads and runs with CUDA asked for on a machine without it."""
    from models.onnx_backend import load_onnx
    from models.providers import set_providers

    set_providers(("cuda",))
    try:
        lm = load_onnx("drafter", int8=True)
        logits = lm.session().extend([1, 2, 3])
    finally:
        set_providers(())
    assert logits.shape[0] == 3 and lm.ort.get_providers() == ["CPUExecutionProvider"]
