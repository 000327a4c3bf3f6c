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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def _package_imports(package: str) -> set[str]:
    base = PROTO / package if package == "tandem_wire" else ROOT / package
    return set().union(*(_imports(p) for p in base.rglob("*.py")))


def test_layers_import_only_what_the_design_allows() -> None:
    nodes = {"edge_node", "cloud_node"}
    assert not _package_imports("edge_node") & {"cloud_node", "coordinator", "tandem", "torch"}
    assert not _package_imports("cloud_node") & {"edge_node", "coordinator", "tandem"}
    assert not _package_imports("coordinator") & (nodes | {"tandem", "models"})
    assert not _package_imports("models") & {"grpc", "tandem_wire", *nodes, "coordinator"}
    assert not _package_imports("tandem_wire") & {"torch", "models", *nodes, "coordinator"}


def test_no_top_level_package_is_named_proto() -> None:
    assert not (ROOT / "proto" / "__init__.py").exists()
