"""The committed generated code is what the .proto gives, and the wire package stays small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto"
GENERATED = ("tandem_pb2.py", "tandem_pb2.pyi", "tandem_pb2_grpc.py")


def test_regenerating_the_wire_code_changes_nothing(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(PROTO / "tandem_wire/v1/tandem.proto"),
        ],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "tandem_wire/v1" / name).read_text()
        committed = (PROTO / "tandem_wire/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: regenerate it (see README)"


# Who may import whom (DESIGN.md, "Layout and layers"): every import outside the standard
# library must be on its package's list. A new dependency is a decision, made here, in review.
WIRE = {"google", "grpc", "numpy", "msgpack", "tandem_wire"}
MODELS = {"models", "numpy", "torch", "onnxruntime", "onnx", "safetensors", "transformers", "tqdm"}
# The exported real drafters' tokenizer.json is read by `tokenizers` (Rust, no torch) on the edge.
MODELS |= {"tokenizers"}
# cryptography: certificates for mTLS; grpc_reflection: optional, imported in dev mode only
RUNTIME = WIRE | {"node_runtime", "zmq", "cryptography", "grpc_reflection"}
# HTTP for people and agent frameworks: the OpenAI-compatible API and Prometheus /metrics
RUNTIME |= {"aiohttp", "prometheus_client"}
# a checkpoint's chat template rendered without transformers (imported only when one is used)
RUNTIME |= {"jinja2"}
# TOML settings files on Python 3.10 (tomllib's backport)
RUNTIME |= {"tomli"}
NODE = RUNTIME | {"models", "grpc_health"}
ALLOWED: dict[str, set[str]] = {
    "tandem_wire": WIRE,
    "models": MODELS,
    "node_runtime": RUNTIME,
    "edge_node": NODE | {"edge_node"},
    # vllm: the cloud's optional engine (cloud_node/vllm_*.py; .venv-vllm, --engine vllm only)
    "cloud_node": NODE | {"cloud_node", "torch", "vllm"},
    "coordinator": RUNTIME | {"coordinator", "grpc_health"},
    # the fleet simulator: SimPy, its progress bar and plots, and Ray (an optional extra)
    "simulations": NODE | {"coordinator", "simulations", "simpy", "tqdm", "matplotlib", "ray"},
}
# Single modules a package may import beyond its list, named exactly: the coordinator's cost
# model shares the pure, torch-free formulas of models.metrics and nothing else of models.
MODULE_EXCEPTIONS: dict[str, set[str]] = {"coordinator": {"models.metrics"}}
# The node runtime sees only models' torch-free protocols; the edge runs without torch.
TORCH_FREE = ("node_runtime", "edge_node")
TORCH_FREE_MODULES = ("models.metrics", "models.onnx_lm", "models.uad", "models.loader")
LOCATIONS = {"tandem_wire": PROTO / "tandem_wire"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"__future__"}


def _dotted_imports(path: Path) -> set[str]:
    """Every imported name, dotted: ``from a.b import c`` gives ``a.b.c``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _outside_allowlist(package: str, path: Path) -> list[str]:
    allowed, extra = ALLOWED[package], MODULE_EXCEPTIONS.get(package, set())
    return sorted(
        name
        for name in _dotted_imports(path)
        if name.split(".")[0] not in allowed | set(sys.stdlib_module_names) | {"__future__"}
        and not any(name == e or name.startswith(e + ".") for e in extra)
    )


def _package_imports(package: str) -> dict[str, set[str]]:
    base = LOCATIONS.get(package, ROOT / package)
    return {str(p.relative_to(ROOT)): _imports(p) for p in sorted(base.rglob("*.py"))}


def test_layers_import_only_what_the_design_allows() -> None:
    wrong = {
        path: found
        for package in ALLOWED
        for path in _package_imports(package)
        if (found := _outside_allowlist(package, ROOT / path))
    }
    assert not wrong, f"imports outside the design's allowlist: {wrong}"


def test_a_module_exception_admits_that_module_only(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from models.metrics import PRIOR_ACCEPTANCE\nfrom models import metrics\n"
        "import models.metrics\nfrom models import task\nfrom models.speculative import verify\n"
    )
    assert _outside_allowlist("coordinator", probe) == ["models.speculative.verify", "models.task"]


def test_nothing_imports_the_application_package() -> None:
    users = [
        path
        for package in ALLOWED
        for path, found in _package_imports(package).items()
        if "tandem" in found
    ]
    assert not users


def test_torch_free_packages_run_without_torch() -> None:
    """Import every torch-free module in a process where torch cannot be imported."""
    modules = [
        path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        for package in TORCH_FREE
        for path in _package_imports(package)
    ] + list(TORCH_FREE_MODULES)
    code = (
        "import sys, importlib\n"
        "sys.modules['torch'] = None\n"  # any import of torch now raises ImportError
        f"for m in {modules!r}: importlib.import_module(m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_top_level_package_is_named_proto() -> None:
    assert not (ROOT / "proto" / "__init__.py").exists()
