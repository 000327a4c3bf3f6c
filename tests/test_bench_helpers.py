"""The benchmarks' helpers: interleaved repeats and spreads, per-round acceptance and survival,
the process CPU reading, and the verify load generator (in process and as its own process)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from cloud_node.node import start_cloud
from edge_node.clouds import CloudDirectory
from edge_node.speculation import SpecSettings, Speculator
from models import task
from models.generate import generate
from models.loader import load_lm
from models.metrics import expected_tokens_per_round, position_survival, theory_survival
from models.sampling import SamplingParams
from node_runtime.kinds import KPolicy
from tandem import loadgen
from tandem.bench_spec import cpu_seconds_from_stat, process_cpu_s
from tandem.repeats import Spread, Target, interleaved, paired_ratios, spreads
from tandem.report import figure_row, median_and_error, spread_text
from tandem.spec_figures import int8_note, judge
from tandem.spec_rounds import (
    RecordingCall,
    RecordingStub,
    RoundRecord,
    acceptance_figures,
    clip_at_stop,
    records,
    unclipped,
)
from tandem_wire.v1 import tandem_pb2 as pb

EOS = task.WordTokenizer().eos_id


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


# ---------------------------------------------------------------- repeats


def test_interleaved_runs_configurations_in_turns() -> None:
    order: list[str] = []

    def config(name: str) -> Any:
        return lambda: order.append(name) or len(order)

    out = interleaved({"a": config("a"), "b": config("b"), "c": config("c")}, repeats=3)
    assert order == ["a", "b", "c"] * 3
    assert out == {"a": [1, 4, 7], "b": [2, 5, 8], "c": [3, 6, 9]}
    with pytest.raises(ValueError, match="repeats"):
        interleaved({"a": config("a")}, repeats=0)


def test_spread_is_median_and_range_and_targets_judge_the_median() -> None:
    s = Spread.of([3.0, 0.4, 0.45])
    assert (s.median, s.low, s.high, s.n) == (0.45, 0.4, 3.0, 3)
    assert Target("<=", 0.5).met(s)  # one bad repeat does not decide it
    assert not Target("<=", 0.5).met(Spread.of([0.4, 0.6, 0.7]))
    assert Target(">=", 3.0).met(Spread.of([2.0, 3.0, 3.5]))
    assert Spread.of([1.0, 2.0]).median == 1.5
    assert s.as_dict() == {
        "median": 0.45,
        "min": 0.4,
        "max": 3.0,
        "n": 3,
        "values": [3.0, 0.4, 0.45],
    }
    with pytest.raises(ValueError):
        Spread.of([])
    with pytest.raises(ValueError, match="op"):
        Target("<", 1.0)


def test_paired_ratios_and_spreads_of_runs() -> None:
    assert paired_ratios([6.0, 8.0], [2.0, 0.0])[0] == 3.0
    assert paired_ratios([1.0], [0.0])[0] != paired_ratios([1.0], [0.0])[0]  # NaN
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
    got = spreads([{"x": 1.0, "y": 5.0}, {"x": 3.0}, {"x": 2.0, "y": 1.0}])
    assert list(got) == ["x"] and got["x"].median == 2.0


def test_figure_rows_show_median_range_and_verdict() -> None:
    d = Spread.of([1.0, 2.0, 4.0]).as_dict()
    assert spread_text(d) == "1-4"
    row = figure_row(d, ">= 3", False, "why")
    assert (row["median"], row["spread"], row["n"], row["met"]) == (2.0, "1-4", 3, False)
    assert figure_row(None)["met"] is None
    med, err = median_and_error([d, None])
    assert med[0] == 2.0 and err[0][0] == 1.0 and err[1][0] == 2.0


def test_judge_uses_medians_and_says_when_int8_earns_nothing() -> None:
    figures = {
        "batch_gain_8": Spread.of([2.0, 3.2, 3.1]),
        "unclipped_mean_accepted_length": Spread.of([4.0]),
        "theory_accepted_length": Spread.of([4.3]),
    }
    verdict = judge(figures)
    assert verdict["batch_gain_8"]["met"]
    assert verdict["theory_accepted_length"]["met"]
    assert not verdict["greedy_match"]["met"]  # not measured is not met
    assert "nothing" in int8_note(Spread.of([1.02]))
    assert "slower in every repeat" in int8_note(Spread.of([0.9, 0.95, 0.97]))
    assert "slower" not in int8_note(Spread.of([0.9, 1.01, 0.97]))
    assert int8_note(Spread.of([1.5])) == ""


# ---------------------------------------------------------------- acceptance and survival


def test_positions_after_a_stop_are_neither_drafted_nor_accepted() -> None:
    assert clip_at_stop([15, EOS, 7, 8], accepted=4, stops={EOS}) == (2, 2)
    assert clip_at_stop([15, EOS, 7], accepted=1, stops={EOS}) == (2, 1)
    assert clip_at_stop([15, 16, 17], accepted=3, stops={EOS}) == (3, 3)
    rs = records([([11, 12, 13], 1), ([14, 15, 16], 3), ([17, EOS], 2)], {EOS})
    assert [r.final for r in rs] == [False, False, True]
    assert rs[2] == RoundRecord(2, 2, True)
    assert unclipped(rs, 3) == rs[:2]


def test_position_survival_counts_rounds_that_reached_each_position() -> None:
    rounds = [(3, 3), (3, 1), (3, 0), (2, 2)]
    assert position_survival(rounds, 3) == [3 / 4, 2 / 4, 1 / 3]
    assert position_survival([], 2) == [None, None]


def test_survival_sums_to_the_mean_accepted_length() -> None:
    # E[accepted] = sum over i of P(accepted >= i): survival and mean length must agree
    rounds = [RoundRecord(4, a, False) for a in (0, 1, 4, 4, 2, 3, 4, 1)]
    f = acceptance_figures(rounds, 4)
    assert f["mean_accepted_length"] == pytest.approx(1 + sum(f["survival"]))
    a = f["per_token_acceptance"]
    assert 1 + sum(f["theory_survival"]) == pytest.approx(expected_tokens_per_round(a, 4))
    assert theory_survival(0.5, 3) == [0.5, 0.25, 0.125]


class _FakeCall:
    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.sent: list[pb.SpecRequest] = []
        self.cancelled = False

    async def write(self, msg: pb.SpecRequest) -> None:
        self.sent.append(msg)

    async def read(self) -> Any:
        return self.replies.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


def test_recording_call_pairs_each_verdict_with_its_draft() -> None:
    verdict = pb.SpecReply(verdict=pb.VerifyReply(session_id="s", round_id=2, accepted=1))
    other = pb.SpecReply(verdict=pb.VerifyReply(session_id="s", round_id=9, accepted=3))
    fake = _FakeCall([verdict, other, grpc.aio.EOF])
    sink: list[tuple[list[int], int]] = []
    call = RecordingCall(fake, sink)

    async def main() -> None:
        req = pb.VerifyRequest(session_id="s", round_id=2, base_position=5, draft=[4, 5, 6])
        await call.write(pb.SpecRequest(verify=req))
        assert await call.read() is verdict
        assert await call.read() is other  # a verdict for no sent round is passed, not recorded
        assert await call.read() is grpc.aio.EOF

    run(main())
    assert sink == [([4, 5, 6], 1)]
    assert len(fake.sent) == 1
    call.cancel()
    assert fake.cancelled


def test_recorded_rounds_match_the_edge_account_with_trained_models() -> None:
    """The rounds recorded at the wire are the rounds the edge counted: same number, drafted
    positions (the drafter stops at EOS) and accepted tokens; each request's last is final."""
    target, tok = load_lm("target")
    drafter, _ = load_lm("drafter-int8")
    prompts = [[tok.bos_id, *tok.encode(p.question)] for p in task.generate(3, 11)]

    async def main() -> list[tuple[list[RoundRecord], Any]]:
        node = await start_cloud(target, tok.eos_id)
        clouds = CloudDirectory("edge-test", static=[node.address])
        spec = Speculator(drafter)
        out = []
        try:
            for p in prompts:
                sink: list[tuple[list[int], int]] = []

                async def pick(tried: Any, sink: Any = sink) -> Any:
                    name, stub = await clouds.pick(tried)
                    return name, RecordingStub(stub, sink)

                s = SpecSettings(max_new=48, eos_id=tok.eos_id, k=4, k_policy=KPolicy.FIXED)
                r = await spec.run(p, SamplingParams(0.0), s, pick)
                out.append((records(sink, s.stops), r.account))
        finally:
            await clouds.close()
            await node.stop()
            spec.pool.shutdown()
        return out

    for rounds, acc in run(main()):
        assert len(rounds) == acc.verify_rounds > 0
        assert sum(r.positions for r in rounds) == acc.drafted_tokens
        assert sum(r.accepted for r in rounds) == acc.accepted_tokens
        assert [r.final for r in rounds] == [False] * (len(rounds) - 1) + [True]


# ---------------------------------------------------------------- process CPU


def test_cpu_seconds_are_read_after_the_command_name() -> None:
    rest = "S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0"
    assert cpu_seconds_from_stat(f"42 (a) b (c)) {rest}", 100) == 3.0
    assert cpu_seconds_from_stat(f"42 (python) {rest}", 100) == 3.0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_process_cpu_rises_with_work() -> None:
    start = process_cpu_s(os.getpid())
    deadline = time.monotonic() + 30
    x = 0
    while process_cpu_s(os.getpid()) - start < 0.05 and time.monotonic() < deadline:
        x += sum(range(10_000))
    assert process_cpu_s(os.getpid()) - start >= 0.05


# ---------------------------------------------------------------- verify load


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, list[Any]]:
    target, tok = load_lm("target")
    prompts = [[tok.bos_id, *tok.encode(p.question)] for p in task.generate(4, 5)]
    refs = [(p, generate(target, p, SamplingParams(0.0), 24, tok.eos_id)) for p in prompts]
    path = tmp_path_factory.mktemp("load") / "refs.json"
    path.write_text(json.dumps(refs))
    return target, path, refs


def test_replayed_load_keeps_every_draft(replay: tuple[Any, Path, list[Any]]) -> None:
    target, _, refs = replay

    async def main() -> tuple[loadgen.Tally, loadgen.Tally]:
        node = await start_cloud(target, EOS)
        try:
            replayed = await loadgen.run(node.address, 2, 3, seconds=0.5, refs=refs, warmup=0.1)
            randoms = await loadgen.run(node.address, 1, 3, seconds=0.3)  # background load
            return replayed, randoms
        finally:
            await node.stop()

    tally, randoms = run(main())
    assert randoms.rounds > 0 and randoms.accepted < randoms.drafted
    summary = loadgen.summary(tally, 0.5)
    assert tally.rounds > 0
    assert summary["acceptance_rate"] == 1.0  # the target's own continuation: pure verification
    assert summary["mean_batch_size"] >= 1.0
    assert summary["overhead_ms_p50"] is not None


def test_rounds_begun_before_the_window_are_not_counted() -> None:
    tally = loadgen.Tally(start=10.0, stop=20.0)
    v = pb.VerifyReply(accepted=2, batch_size=3, model_ms=1.0)
    tally.note(9.9, 10.2, 2, v)
    tally.note(10.1, 10.3, 2, v)
    assert (tally.rounds, tally.batch_sum, tally.drafted) == (1, 3, 2)
    assert tally.overhead_ms == [pytest.approx(200.0 - 1.0)]


def test_measure_runs_the_clients_in_another_process(replay: tuple[Any, Path, list[Any]]) -> None:
    target, path, _ = replay

    async def main() -> dict[str, Any]:
        node = await start_cloud(target, EOS)
        try:  # a thread waits for the process, so this loop keeps serving it
            return await asyncio.to_thread(loadgen.measure, node.address, path, 2, 3, 0.5, 0.1)
        finally:
            await node.stop()

    got = run(main())
    assert got["rounds"] > 0 and got["rounds_per_s"] > 0
    assert got["acceptance_rate"] == 1.0
    assert 0 < got["client_cpu_share"] <= 1.5
