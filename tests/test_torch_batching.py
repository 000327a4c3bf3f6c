"""The torch backend splits a batch of very unequal feeds into two passes, with the same results."""

from __future__ import annotations

import numpy as np

from models import task
from models.loader import load_lm
from models.torch_backend import feed_groups


def test_one_long_feed_gets_its_own_pass_and_like_feeds_share_one() -> None:
    assert feed_groups([5] * 7 + [16]) == [list(range(7)), [7]]
    assert feed_groups([5] * 8) == [list(range(8))]
    assert feed_groups([2, 3, 2, 3]) == [[0, 2, 1, 3]]
    assert feed_groups([]) == []
    groups = feed_groups([1, 30, 1, 1, 1, 1, 1, 1, 1, 1])
    assert sorted(i for g in groups for i in g) == list(range(10)) and len(groups) == 2


def test_mixed_feeds_give_what_separate_calls_give() -> None:
    lm, tok = load_lm("target")
    problems = task.generate(8, task.HELDOUT_SEED)
    prompts = [[tok.bos_id, *tok.encode(p.question)] for p in problems]
    batched = [lm.session() for _ in prompts]
    alone = [lm.session() for _ in prompts]
    # warm caches of different lengths, then one step: seven 3-token feeds and one long prompt
    lm.extend_batch(batched[:7], [p[:4] for p in prompts[:7]])
    for s, p in zip(alone[:7], prompts[:7], strict=True):
        s.extend(p[:4])
    feeds = [p[4:7] for p in prompts[:7]] + [prompts[7]]
    out = lm.extend_batch(batched, feeds)
    ref = [s.extend(f) for s, f in zip(alone, feeds, strict=True)]
    for a, b in zip(out, ref, strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a.argmax(-1), b.argmax(-1))
        assert np.allclose(a, b, atol=1e-3)
    assert [s.length for s in batched] == [s.length for s in alone]
