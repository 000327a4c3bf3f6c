"""Link specs, partial changes and schedules: pure data, checked up front."""

from __future__ import annotations

import json

import pytest

from simulations.link.profiles import profile_spec
from simulations.link.spec import DirectionSpec, LinkSpec, Schedule, parse_hostport


def test_partial_changes_target_both_or_one_direction() -> None:
    spec = LinkSpec.symmetric(latency_ms=10.0, bandwidth_mbit=5.0)
    both = spec.changed({"latency_ms": 20})
    assert both.uplink.latency_ms == both.downlink.latency_ms == 20
    one = spec.changed({"up_bandwidth_mbit": 1.0, "down_jitter_ms": 3.0})
    assert (one.uplink.bandwidth_mbit, one.downlink.bandwidth_mbit) == (1.0, 5.0)
    assert (one.uplink.jitter_ms, one.downlink.jitter_ms) == (0.0, 3.0)
    nested = spec.changed({"downlink": {"blackhole": True}})
    assert nested.downlink.blackhole and not nested.uplink.blackhole and nested.blackholed
    assert spec.changed(LinkSpec()) == LinkSpec()  # a full spec replaces
    assert LinkSpec.from_dict(one.to_dict()) == one


@pytest.mark.parametrize("change", [{"latency": 5}, {"up_speed": 1}, {"uplink": {"x": 1}}])
def test_unknown_settings_are_named(change: dict) -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        LinkSpec().changed(change)
    with pytest.raises(ValueError, match="'uplink' takes a mapping"):
        LinkSpec().changed({"uplink": 3})


@pytest.mark.parametrize(
    "bad",
    [{"latency_ms": -1.0}, {"bandwidth_mbit": float("nan")}, {"jitter_ms": "5"}, {"blackhole": 1}],
)
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        DirectionSpec(**bad)


def test_rtt_and_serialization() -> None:
    spec = LinkSpec(DirectionSpec(10.0, 2.0, 8.0), DirectionSpec(20.0, 1.0))
    assert spec.rtt_ms == 33.0
    assert spec.uplink.serialization_ms(1000) == pytest.approx(1.0)  # 8000 bit at 8 Mbit/s
    assert spec.downlink.serialization_ms(1000) == 0.0


def test_schedule_sorts_validates_and_parses(tmp_path) -> None:
    sched = Schedule([(2.0, {"latency_ms": 5}), (1.0, LinkSpec())])
    assert [s.at_s for s in sched.steps] == [1.0, 2.0] and sched.duration_s == 2.0
    with pytest.raises(ValueError):
        Schedule([(1.0, {"nope": 1})])
    with pytest.raises(ValueError):
        Schedule([(-1.0, {})])
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {"steps": [{"at_s": 0.5, "profile": "lte"}, {"at_s": 1, "set": {"up_blackhole": True}}]}
        )
    )
    loaded = Schedule.load(path, profile_spec)
    assert loaded.steps[0].change == profile_spec("lte")
    assert loaded.steps[1].change == {"up_blackhole": True}
    for bad in (
        [{"at_s": 1}],
        [{"at_s": 1, "set": {}, "profile": "lte"}],
        {"x": []},
        [{"set": {}}],
    ):
        with pytest.raises(ValueError):
            Schedule.parse(bad, profile_spec)
    with pytest.raises(ValueError, match="profile"):
        Schedule.parse([{"at_s": 1, "profile": "lte"}])


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    for bad in ("127.0.0.1", ":80", "h:x", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_hostport(bad)
