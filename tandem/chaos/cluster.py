"""Real node processes for the chaos suite: started as ``tandem up`` starts them, then faulted.

``ChaosCluster`` is a ``LocalCluster`` that can also send a log to any file (``/dev/full`` is
a disk that is full), freeze and thaw a process (SIGSTOP, SIGCONT), kill it without a word and
start it again on the same port, and read each node's JSON-line log back as events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.cluster import LocalCluster, Proc


@dataclass
class NodeSpec:
    """How a node was started, so that it can be started again where it was."""

    role: str
    name: str
    args: tuple[str, ...]
    log_to: Path | None = None  # None: <workdir>/<name>.log


@dataclass
class ChaosCluster(LocalCluster):
    """A local cluster whose processes the chaos suite may kill, freeze and restart."""

    specs: dict[str, NodeSpec] = field(default_factory=dict)
    by_name: dict[str, Proc] = field(default_factory=dict)

    def launch(
        self, role: str, name: str, *args: str, log_to: Path | None = None, port: int = 0
    ) -> Proc:
        """Start ``tandem serve ROLE`` (on ``port``, 0: a free one) and wait for it to listen."""
        assert self.workdir is not None, "use ChaosCluster as a context manager"
        spec = NodeSpec(role, name, tuple(args), log_to)
        self.specs[name] = spec
        ready = self.workdir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        log_path = log_to or self.workdir / f"{name}.log"
        port_args = ("--port", str(port)) if port else ()
        cmd = [sys.executable, "-m", "tandem", "serve", role, "--ready-file", str(ready)]
        cmd += [*port_args, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        mode = "wb" if log_to is None else "ab"  # /dev/full cannot be truncated
        with open(log_path, mode) as log:
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {popen.returncode} while starting")
            if time.monotonic() > deadline:
                popen.kill()
                raise TimeoutError(f"{name} did not start within {self.start_timeout_s} s")
            time.sleep(0.05)
        address = json.loads(ready.read_text())["address"]
        proc = Proc(role, name, popen, address, log_path)
        self.procs.append(proc)
        self.by_name[name] = proc
        return proc

    def restart(self, name: str) -> Proc:
        """Start ``name`` again with its flags, on the port it listened on."""
        old = self.by_name[name]
        if old.popen.poll() is None:
            self.kill(old)
        spec = self.specs[name]
        port = int(old.address.rsplit(":", 1)[1])
        return self.launch(spec.role, name, *spec.args, log_to=spec.log_to, port=port)

    def kill9(self, name: str) -> float:
        """SIGKILL ``name``; returns the wall time of the signal."""
        proc = self.by_name[name]
        t = time.time()
        self.kill(proc)
        return t

    def freeze(self, name: str) -> float:
        """SIGSTOP: the process holds its sockets open and answers nothing (the kernel still
        accepts its TCP traffic, so only keepalive finds it)."""
        t = time.time()
        os.kill(self.by_name[name].popen.pid, signal.SIGSTOP)
        return t

    def thaw(self, name: str) -> float:
        """SIGCONT after ``freeze``."""
        t = time.time()
        os.kill(self.by_name[name].popen.pid, signal.SIGCONT)
        return t

    def terminate(self, name: str) -> float:
        """SIGTERM: a graceful stop (NOT_SERVING, drain, stop); does not wait for the exit."""
        t = time.time()
        self.by_name[name].popen.send_signal(signal.SIGTERM)
        return t

    def pid(self, name: str) -> int:
        """The process id of ``name``."""
        return self.by_name[name].popen.pid

    def events(self, name: str, since: float = 0.0) -> list[dict[str, Any]]:
        """The JSON-line log events of ``name`` at or after wall time ``since`` (none when its
        log went to a device that keeps nothing)."""
        path = self.by_name[name].log_path
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and float(ev.get("ts", 0.0)) >= since:
                out.append(ev)
        return out

    def rss_mb(self, name: str) -> float:
        """Resident memory of ``name`` (MB, from /proc)."""
        for line in Path(f"/proc/{self.pid(name)}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"no VmRSS for {name}")
