"""Emulating a device: every model call runs for real, then waits until it took the profile's time.

Tokens and acceptance stay real (the model really runs); only the wall time is the emulated
device's. A call that is already slower than its profile here cannot be padded down: it is counted
as infeasible on this machine, with the worst overshoot, and reported in Metrics and telemetry.

Calls run on model threads, never on the event loop. Padding sleeps release the GIL
(``time.sleep``); only the last ``spin_s`` of a wait is a busy loop, because Linux sleeps overshoot
by ~0.1 ms. One call at a time holds the emulated device, as one accelerator runs one pass at a
time: a second thread's call queues behind the first, padding included.

The node runtime sees models only through their protocol, so the protocol is restated here
structurally (``models.base`` is not imported: the runtime stays independent of ``models``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from node_runtime.profiles import CallKind, Profile, get_profile, step_ms


class _Session(Protocol):
    @property
    def length(self) -> int: ...

    def truncate(self, length: int) -> None: ...


class _LM(Protocol):
    name: str
    vocab_size: int
    max_len: int

    def session(self) -> Any: ...

    def extend_batch(
        self, sessions: Sequence[Any], tokens: Sequence[Sequence[int]]
    ) -> list[Any]: ...


def precise_sleep(
    seconds: float, spin_s: float = 0.00025, clock: Callable[[], float] = time.perf_counter
) -> None:
    """Wait ``seconds``: sleep (GIL released) all but the last ``spin_s``, then spin to the end."""
    deadline = clock() + seconds
    coarse = seconds - spin_s
    if coarse > 0:
        time.sleep(coarse)
    while clock() < deadline:
        pass


@dataclass
class EmulationStats:
    """Counters since start, for Metrics and telemetry."""

    calls: int = 0  # model calls made under the profile
    device_ms: float = 0.0  # the profile's time for those calls (emulated device time)
    real_ms: float = 0.0  # what the calls really took here
    padded_ms: float = 0.0  # time spent waiting to reach the profile's time
    infeasible_calls: int = 0  # calls already slower here than the profile allows
    worst_overshoot_ms: float = 0.0  # the largest real - profile time of an infeasible call

    def values(self, device: str) -> dict[str, float]:
        """Metrics values; the device name rides in a key, since Metrics values are numbers."""
        return {
            f"emulated_device:{device}": 1.0,
            "emulated_calls": float(self.calls),
            "emulated_device_s": self.device_ms / 1e3,
            "emulated_real_s": self.real_ms / 1e3,
            "emulated_padded_s": self.padded_ms / 1e3,
            "emulated_infeasible_calls": float(self.infeasible_calls),
            "emulated_worst_overshoot_ms": self.worst_overshoot_ms,
        }


def call_kind(contexts: Sequence[int], feeds: Sequence[int], role: str) -> CallKind:
    """What a call is, from each sequence's cached length and fed tokens."""
    if any(c == 0 for c in contexts):
        return CallKind.PREFILL
    if all(n == 1 for n in feeds):
        return CallKind.DRAFT if role == "edge" else CallKind.DECODE
    return CallKind.VERIFY


def call_ms(profile: Profile, contexts: Sequence[int], feeds: Sequence[int]) -> float:
    """The profile's time for one pass feeding ``feeds[i]`` tokens after ``contexts[i]`` cached."""
    new = sum(feeds)
    kv = sum(c + n for c, n in zip(contexts, feeds, strict=True))
    attended = sum(n * (c + (n + 1) / 2) for c, n in zip(contexts, feeds, strict=True))
    return step_ms(profile, new, kv, attended)


class EmulatedSession:
    """A session of the wrapped model whose extends go through the emulated device."""

    def __init__(self, lm: EmulatedLM, inner: _Session) -> None:
        self.lm = lm
        self.inner = inner

    @property
    def length(self) -> int:
        """How many tokens the cache holds."""
        return self.inner.length

    def extend(self, tokens: Sequence[int]) -> Any:
        """Feed ``tokens`` through the emulated device; logits as the wrapped model returns them."""
        return self.lm.extend_batch([self], [tokens])[0]

    def truncate(self, length: int) -> None:
        """Roll the cache back (no device time: it only moves a length)."""
        self.inner.truncate(length)


class EmulatedLM:
    """A model whose every call takes the wall time ``profile`` gives it (or more, if infeasible).

    Same protocol as the wrapped model (``session``, ``extend_batch``, name, vocab_size,
    max_len); other attributes are the wrapped model's.
    """

    def __init__(
        self,
        inner: _LM,
        profile: Profile,
        clock: Callable[[], float] = time.perf_counter,
        wait: Callable[[float], None] = precise_sleep,
    ) -> None:
        self.inner = inner
        self.profile = profile
        self.name = inner.name
        self.vocab_size = inner.vocab_size
        self.max_len = inner.max_len
        self.stats = EmulationStats()
        self.by_kind: dict[CallKind, int] = dict.fromkeys(CallKind, 0)  # calls per kind
        self._clock, self._wait = clock, wait
        self._device = threading.Lock()  # one pass at a time on the emulated device
        self._count = threading.Lock()  # counters, read from the event loop

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found here: the wrapped model's extras (parameters, ...)
        return getattr(self.inner, name)

    def session(self) -> EmulatedSession:
        """A fresh, empty session."""
        return EmulatedSession(self, self.inner.session())

    def extend_batch(
        self, sessions: Sequence[EmulatedSession], tokens: Sequence[Sequence[int]]
    ) -> list[Any]:
        """Run the wrapped model's pass, then wait until it took the profile's time."""
        if not sessions:
            return []
        for s in sessions:
            if not isinstance(s, EmulatedSession) or s.lm is not self:
                raise ValueError("session belongs to another model")
        inner = [s.inner for s in sessions]
        contexts = [s.length for s in inner]
        feeds = [len(t) for t in tokens]
        with self._device:
            t0 = self._clock()
            out = self.inner.extend_batch(inner, tokens)
            real_ms = (self._clock() - t0) * 1e3
            target_ms = call_ms(self.profile, contexts, feeds)
            pad_ms = target_ms - real_ms
            if pad_ms > 0:
                self._wait(pad_ms / 1e3)
        self._record(call_kind(contexts, feeds, self.profile.role), target_ms, real_ms, pad_ms)
        return out

    def _record(self, kind: CallKind, target_ms: float, real_ms: float, pad_ms: float) -> None:
        with self._count:
            st = self.stats
            st.calls += 1
            st.device_ms += target_ms
            st.real_ms += real_ms
            self.by_kind[kind] += 1
            if pad_ms >= 0:
                st.padded_ms += pad_ms
            else:
                st.infeasible_calls += 1
                st.worst_overshoot_ms = max(st.worst_overshoot_ms, -pad_ms)

    def values(self) -> dict[str, float]:
        """The emulation counters for Metrics and telemetry."""
        with self._count:
            out = self.stats.values(self.profile.name)
            out.update({f"emulated_{k.value}_calls": float(v) for k, v in self.by_kind.items()})
        return out


def emulation_values(lm: object) -> dict[str, float]:
    """Emulation counters of ``lm`` when it is emulated; empty otherwise."""
    return lm.values() if isinstance(lm, EmulatedLM) else {}


def emulate(lm: _LM, device: str) -> Any:
    """``lm`` wrapped for the named profile; ``lm`` itself for "cpu" or "" (no emulation)."""
    if device in ("", "cpu"):
        return lm
    return EmulatedLM(lm, get_profile(device))
