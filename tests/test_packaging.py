"""An installed (not editable) Tandem holds every package and the data files code loads."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_directory_is_listed() -> None:
    cfg = _setuptools()
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in {".venv", "tests", "runs", "build", "examples"} or "-" in str(rel):
            continue
        if rel.parts[0] == "proto":
            rel = rel.relative_to("proto")
        found.add(".".join(rel.parts))
    assert found - set(cfg["packages"]) == set()


def test_data_files_code_loads_are_package_data() -> None:
    data = _setuptools()["package-data"]
    assert "*.jsonl" in data["models.prompts"] and list((ROOT / "models/prompts").glob("*.jsonl"))
    assert "configs/*.toml" in data["simulations"]
    assert list((ROOT / "simulations/configs").glob("*.toml"))
