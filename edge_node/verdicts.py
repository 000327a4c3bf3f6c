"""What is wrong with a cloud's verdict, if anything: a cloud that answers a wrong one is treated
as lost, and nothing it said is kept."""

from __future__ import annotations

from tandem_wire.v1 import tandem_pb2 as pb


def verdict_fault(
    v: pb.VerifyReply, sid: str, rid: int, base: int, drafted: int, vocab_size: int
) -> str | None:
    """What is wrong with a verdict for round ``rid`` over ``drafted`` drafts at ``base``, or
    None. A cloud that answers a wrong verdict is treated as lost: nothing it says is kept."""
    if v.session_id != sid or v.round_id != rid:
        return f"verdict for session {v.session_id!r} round {v.round_id}, expected round {rid}"
    if v.base_position != base:
        return f"verdict at base_position {v.base_position}, expected {base}"
    if not 0 <= v.accepted <= drafted:
        return f"accepted {v.accepted} outside [0, {drafted}]"
    if not 0 <= v.next_token < vocab_size:
        return f"next_token {v.next_token} outside the vocabulary of {vocab_size}"
    if v.position != base + v.accepted + 1:
        return f"position {v.position}, expected {base + v.accepted + 1}"
    return None


def text_fault(v: pb.VerifyReply, sid: str, rid: int, base: int) -> str | None:
    """What is wrong with a text-draft verdict, or None (a wrong one loses the cloud)."""
    if v.session_id != sid or v.round_id != rid:
        return f"verdict for session {v.session_id!r} round {v.round_id}, expected round {rid}"
    if v.base_position != base:
        return f"verdict at base_position {v.base_position}, expected {base}"
    if not 0 <= v.accepted <= v.drafted:
        return f"accepted {v.accepted} outside [0, {v.drafted}]"
    if v.position != base + v.accepted + 1:
        return f"position {v.position}, expected {base + v.accepted + 1}"
    return None
