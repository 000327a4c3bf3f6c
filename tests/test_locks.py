"""The lock files pin every dependency pyproject.toml asks for, consistently across extras."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import locks  # noqa: E402  (scripts/ is not a package)

tomllib = pytest.importorskip("tomllib")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("extra", ["base", *locks.EXTRAS])
def test_every_direct_dependency_is_pinned_within_its_range(extra: str) -> None:
    meta = project()
    wanted = meta["dependencies"] + (
        [] if extra == "base" else meta["optional-dependencies"][extra]
    )
    pins = locks.read(ROOT / "constraints" / f"{extra}.txt")
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue  # a backport for other Pythons (tomli below 3.11): the locks are for this one
        name = locks.normalize(req.name)
        assert name in pins, f"{name} is not pinned in constraints/{extra}.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_locks_agree_and_the_edge_needs_no_torch() -> None:
    seen: dict[str, str] = {}
    for extra in ("base", *locks.EXTRAS):
        for name, version in locks.read(ROOT / "constraints" / f"{extra}.txt").items():
            assert seen.setdefault(name, version) == version, f"{name} pinned twice differently"
    assert "torch" not in locks.read(ROOT / "constraints" / "edge.txt")
    cpu = locks.read(ROOT / "constraints" / "cpu.txt")
    assert locks.read(ROOT / "constraints" / "cloud.txt")["torch"] == cpu["torch"] == "2.13.0"
