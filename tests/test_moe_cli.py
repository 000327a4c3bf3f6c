"""``tandem train moe`` and ``tandem bench moe`` are wired into the CLI."""

from __future__ import annotations

from tandem.bench_moe import _handler
from tandem.cli import build_parser


def test_train_and_bench_moe_parse() -> None:
    p = build_parser()
    train = p.parse_args(["train", "moe", "--seed", "3"])
    assert (train.model, train.seed) == ("moe", 3)
    bench = p.parse_args(["bench", "moe", "--quick", "--json", "x.json"])
    assert bench.quick and bench.json == "x.json" and bench.func is _handler
