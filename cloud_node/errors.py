"""Why a cloud request is refused, in gRPC-neutral kinds the servicer maps to status codes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Kind = Literal["invalid", "not_found", "exists", "exhausted", "unavailable", "precondition"]


class RequestError(Exception):
    """Bad input, overload or a stopping node, with the kind the servicer maps to a status.

    Kinds: ``invalid`` (INVALID_ARGUMENT), ``not_found`` (NOT_FOUND), ``exists``
    (ALREADY_EXISTS), ``exhausted`` (RESOURCE_EXHAUSTED), ``unavailable`` (UNAVAILABLE),
    ``precondition`` (FAILED_PRECONDITION). The message names the field or the limit.
    """

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind


def check_token_ids(tokens: Sequence[int] | np.ndarray, vocab: int, field_name: str) -> None:
    """INVALID_ARGUMENT naming the first id of ``tokens`` outside ``[0, vocab)``."""
    ids = np.asarray(tokens, dtype=np.int64)
    bad = np.nonzero((ids < 0) | (ids >= vocab))[0]
    if len(bad):
        raise RequestError("invalid", f"{field_name}: token id {ids[bad[0]]} outside [0, {vocab})")


def check_prompt(prompt: Sequence[int], vocab: int, max_len: int) -> None:
    """A prompt of at least one token, shorter than the context, in the vocabulary."""
    if not prompt:
        raise RequestError("invalid", "prompt must hold at least one token")
    if len(prompt) >= max_len:
        raise RequestError("invalid", f"prompt of {len(prompt)} tokens exceeds max_len {max_len}")
    check_token_ids(prompt, vocab, "prompt")


class ModelFailure(RuntimeError):
    """The model failed while serving a request: a fault of this node, not of the request.

    Clients get INTERNAL with an error id; the server's log holds the cause (``__cause__``).
    """


def model_failure(what: str, cause: BaseException) -> ModelFailure:
    """A ModelFailure for one caller of a failed pass, chained to what the model raised."""
    failure = ModelFailure(f"{what} failed: {cause}")
    failure.__cause__ = cause
    return failure
