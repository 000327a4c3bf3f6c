"""A local cluster on loopback: coordinator, cloud and edge nodes as separate processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


@dataclass
class Proc:
    """One node process and where it listens."""

    role: str
    name: str
    popen: subprocess.Popen[bytes]
    address: str
    log_path: Path


@dataclass
class LocalCluster:
    """Starts nodes with ``python -m tandem serve ...`` and stops them all on exit."""

    workdir: Path | None = None  # logs and ready files; a temporary folder when None
    start_timeout_s: float = 120.0  # time a node has to start listening
    procs: list[Proc] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> LocalCluster:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tandem-cluster-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
        if self._tmp is not None:
            self._tmp.cleanup()

    def start(self, role: str, name: str, *args: str) -> Proc:
        """Start ``tandem serve ROLE ARGS`` and wait until it is listening."""
        assert self.workdir is not None, "use LocalCluster as a context manager"
        ready = self.workdir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        log_path = self.workdir / f"{name}.log"
        cmd = [sys.executable, "-m", "tandem", "serve", role, "--ready-file", str(ready), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if popen.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {popen.returncode} while starting:\n{tail}")
            if time.monotonic() > deadline:
                popen.kill()
                raise TimeoutError(f"{name} did not start within {self.start_timeout_s} s")
            time.sleep(0.05)
        proc = Proc(role, name, popen, json.loads(ready.read_text())["address"], log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def kill(self, proc: Proc) -> None:
        """SIGKILL: a node dying without a word."""
        proc.popen.kill()
        proc.popen.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every node, edges first so that no request is cut by its cloud leaving."""
        order = {"edge": 0, "cloud": 1, "coordinator": 2}
        for proc in sorted(self.procs, key=lambda p: order.get(p.role, 3)):
            self.stop(proc)
