"""Sweeps on Ray: every run a Ray task, results in the order asked (Ray is an optional extra).

``--ray local`` starts a private Ray instance on this machine; ``--ray ADDRESS`` joins a cluster
(``ray://host:10001`` or ``host:6379``). Runs are pure functions of their config tables, so a
sweep on Ray gives the same figures as in-process (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulations.fleet.sweep import Runner, _run_table


def ray_runner(address: str, num_cpus: int | None = None) -> Runner:
    """A sweep runner on Ray at ``address`` ("local": a private instance here)."""

    def run(tables: list[dict[str, Any]], step: Callable[[int], None]) -> list[dict[str, Any]]:
        try:
            import ray
        except ImportError as exc:  # the optional extra is missing
            raise RuntimeError("--ray needs the ray extra: pip install 'tandem[ray]'") from exc
        started = not ray.is_initialized()
        if started:
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        try:
            task = ray.remote(_run_table)
            refs = [task.remote(t) for t in tables]
            index = {ref: i for i, ref in enumerate(refs)}
            out: list[dict[str, Any] | None] = [None] * len(refs)
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    out[index[ref]] = ray.get(ref)
                    step(1)
            return [r for r in out if r is not None]
        finally:
            if started:
                ray.shutdown()

    return run
