"""Lock files of Tandem's dependencies: write them (``scripts/lock``), check an install against
them (``scripts/setup``). Standard library only: it runs before anything else is installed.

One pip resolution of every extra together fixes one version of each package; each extra's lock
(``constraints/<extra>.txt``, ``base`` for the core dependencies) then lists the part of that
resolution the extra needs, so any combination of locks agrees with itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "constraints"
# The torch pin that keeps the cloud extra on the CPU build; an input of every resolution.
TORCH_PIN = LOCKS / "cpu.txt"
EXTRAS = ("edge", "cloud", "dev", "ray")
# Installed alongside but not dependencies of the project: the installer and the project itself.
NOT_LOCKED = {"pip", "tandem"}


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(target: str, constraints: list[Path]) -> dict[str, str]:
    """{name: version} pip would install for ``target`` into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed"]
        for c in constraints:
            cmd += ["-c", str(c)]
        subprocess.run([*cmd, "--report", str(report), target], cwd=ROOT, check=True)
        items = json.loads(report.read_text())["install"]
    pins = {}
    for item in items:
        name = normalize(item["metadata"]["name"])
        if name not in NOT_LOCKED:
            # A local label (+cpu) names one index's build; the plain version matches it there.
            pins[name] = item["metadata"]["version"].split("+", 1)[0]
    return pins


def write(pins: dict[str, str], path: Path, what: str) -> None:
    """One lock file, sorted, with a header saying where it came from."""
    py = f"{platform.python_implementation()} {platform.python_version()}"
    head = [
        f"# Every dependency of {what}, pinned. Written by scripts/lock; do not edit by hand.",
        f"# Resolved for {py} on {platform.system()} {platform.machine()}.",
    ]
    body = [f"{name}=={pins[name]}" for name in sorted(pins)]
    path.write_text("\n".join([*head, *body]) + "\n")


def lock(keep: bool = False) -> None:
    """Resolve everything once, then write each extra's part of it, and pin the installer.

    ``keep`` holds every package already locked at its locked version, so adding a dependency
    pins only what is new instead of moving everything to the newest release.
    """
    write({"pip": metadata.version("pip")}, LOCKS / "pip.txt", "the installer (pip itself)")
    held = [LOCKS / f"{e}.txt" for e in ("base", *EXTRAS)] if keep else []
    everything = resolve(f".[{','.join(EXTRAS)}]", [TORCH_PIN, *[h for h in held if h.is_file()]])
    with tempfile.TemporaryDirectory() as tmp:
        all_pins = Path(tmp) / "all.txt"
        write(everything, all_pins, "everything")
        for extra in ("base", *EXTRAS):
            target = "." if extra == "base" else f".[{extra}]"
            what = "tandem" if extra == "base" else f"tandem[{extra}]"
            write(resolve(target, [all_pins]), LOCKS / f"{extra}.txt", what)
            print(f"wrote constraints/{extra}.txt")


def read(path: Path) -> dict[str, str]:
    """{name: version} of a lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def check(extras: list[str]) -> tuple[list[str], list[str]]:
    """(installed packages at another version than their lock, installed packages not locked).

    The second list is information, not an error: a user's own additions (a real checkpoint's
    package, say), or a backport another Python needs (``tomli`` on 3.10), are not the locks'
    business; a locked package at another version is.
    """
    pins: dict[str, str] = {}
    for extra in ("base", *extras):
        pins |= read(LOCKS / f"{extra}.txt")
    wrong, extra_dists = [], []
    for dist in metadata.distributions():
        name = normalize(dist.metadata["Name"])
        version = dist.version.split("+", 1)[0]
        if name in NOT_LOCKED or (name == "setuptools" and name not in pins):
            continue  # the venv's own setuptools, when no dependency asks for one
        if name not in pins:
            extra_dists.append(f"{name}=={dist.version}")
        elif pins[name] != version:
            wrong.append(f"{name}=={dist.version} (lock: {pins[name]})")
    return sorted(wrong), sorted(extra_dists)


def main(argv: list[str] | None = None) -> int:
    """``lock`` writes the lock files; ``check EXTRAS`` compares this environment with them."""
    ap = argparse.ArgumentParser(prog="python scripts/locks.py", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    lk = sub.add_parser("lock", help="re-resolve and write constraints/*.txt")
    lk.add_argument(
        "--keep",
        action="store_true",
        help="hold locked packages at their versions",
    )
    c = sub.add_parser("check", help="fail if an installed package differs from the locks")
    c.add_argument("extras", nargs="?", default=",".join(EXTRAS), help="comma-separated extras")
    args = ap.parse_args(argv)
    if args.command == "lock":
        lock(keep=args.keep)
        return 0
    extras = [e for e in args.extras.split(",") if e]
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        print(f"unknown extras {unknown}; known: {', '.join(EXTRAS)}", file=sys.stderr)
        return 2
    wrong, unlocked = check(extras)
    if unlocked:
        print(f"note: installed but not locked: {', '.join(unlocked)}", file=sys.stderr)
    if wrong:
        print("installed packages that differ from constraints/*.txt:", file=sys.stderr)
        print("\n".join(f"  {w}" for w in wrong), file=sys.stderr)
        print("refresh the locks with: bash scripts/lock", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
