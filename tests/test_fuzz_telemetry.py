"""Hostile telemetry frames given to a real subscriber exactly as its socket loop does: random
bytes, random msgpack of the wrong shape, mutated valid samples, wrong frame counts. It drops and
counts every bad frame and never raises."""

from __future__ import annotations

import random

import msgpack
from fuzz_support import FAST, SEEDS
from hypothesis import given
from hypothesis import strategies as st

from node_runtime.telemetry import TOPIC, Reading, Sample, TelemetrySubscriber, encode_sample
from tandem.fuzz_targets import Harness
from tandem.fuzzing import Tally, mutate

JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


def _valid(seq: int) -> bytes:
    return encode_sample(Sample("edge-1", "edge", "e1", seq, 1.0, 2.0, Reading(active_sessions=2)))


@FAST
@given(payload=st.binary(max_size=4096))
def test_random_bytes_are_dropped_and_counted(payload: bytes) -> None:
    sub = TelemetrySubscriber()
    taken = sub.handle([TOPIC, payload])
    assert (taken is None) == (sub.stats()["malformed_total"] == 1.0)


@FAST
@given(obj=JSONISH)
def test_msgpack_of_the_wrong_shape_is_dropped(obj: object) -> None:
    sub = TelemetrySubscriber()
    assert sub.handle([TOPIC, msgpack.packb(obj, use_bin_type=True)]) is None
    assert sub.stats()["malformed_total"] == 1.0


@FAST
@given(seed=SEEDS)
def test_mutated_samples_never_raise(seed: int) -> None:
    sub = TelemetrySubscriber()
    rng = random.Random(seed)
    assert sub.handle([TOPIC, _valid(1)]) is not None
    sub.handle([TOPIC, mutate(_valid(2), rng)], rng.choice((None, "edge-1", "cloud-9")))
    assert sub.latest("edge-1") is not None  # the good sample stays


def test_wrong_frame_counts_and_oversized_frames_are_counted() -> None:
    sub = TelemetrySubscriber()
    for frames in ([_valid(1)], [TOPIC], [b"other", _valid(1)], [TOPIC, _valid(1), b""]):
        assert sub.handle(frames) is None
    assert sub.handle([TOPIC, b"\x81" + b"\xa1a" * 300_000]) is None
    stats = sub.stats()
    assert stats["malformed_frames_total"] == 4.0 and stats["malformed_total"] == 5.0


def test_many_seeded_frames_through_the_harness_have_no_finding() -> None:
    tally = Tally()
    harness = Harness(tally)
    harness.subscriber = TelemetrySubscriber()
    rng = random.Random(1)
    for _ in range(3000):
        harness.telemetry_case(rng)
    assert tally.findings == [] and tally.cases == 3000
    assert tally.by_surface["telemetry.frame"]["clean"] > 2000  # most frames were hostile
