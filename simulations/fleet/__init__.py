"""Fleet simulation: thousands of edge devices, cloud nodes and a coordinator on SimPy.

It runs on the live system's own tables and code, imported, never copied: device costs from
``node_runtime.profiles`` (priced by ``node_runtime.emulation.call_ms``, the function live nodes
pad to), links from ``simulations.link.profiles``, speculation formulas from ``models.metrics``,
and the coordinator's scheduling (``coordinator.policy.pick_cloud``, ``coordinator.costmodel``).
"""

from simulations.fleet.config import ArrivalKind, Arrivals, FleetConfig, SimMode
from simulations.fleet.fleet import Fleet, simulate

__all__ = ["ArrivalKind", "Arrivals", "Fleet", "FleetConfig", "SimMode", "simulate"]
