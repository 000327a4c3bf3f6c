"""User-space link emulation for latency experiments: a TCP proxy that adds per-direction
latency, jitter, bandwidth limits, connection resets and blackholes, scripted over time.

    async with LinkProxy(ProxyConfig(upstream="127.0.0.1:50051"), get_profile("lte").spec) as l:
        channel = aio_channel(l.address)  # talk through the emulated LTE link
"""

from simulations.link.profiles import PROFILES, Profile, UnknownProfileError, get_profile
from simulations.link.proxy import LinkCounters, LinkProxy, ProxyConfig
from simulations.link.spec import DirectionSpec, LinkSpec, Schedule, ScheduleStep
from simulations.link.threaded import ThreadedLink

__all__ = [
    "PROFILES",
    "DirectionSpec",
    "LinkCounters",
    "LinkProxy",
    "LinkSpec",
    "Profile",
    "ProxyConfig",
    "Schedule",
    "ScheduleStep",
    "ThreadedLink",
    "UnknownProfileError",
    "get_profile",
]
