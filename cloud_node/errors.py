"""Why a cloud request is refused, in gRPC-neutral kinds the servicer maps to status codes."""

from __future__ import annotations

from typing import Literal

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


class ModelFailure(RuntimeError):
    """The model failed while serving a request: a fault of this node, not of the request.

    Clients get INTERNAL with an error id; the server's log holds the cause (``__cause__``).
    """


def model_failure(what: str, cause: BaseException) -> ModelFailure:
    """A ModelFailure for one caller of a failed pass, chained to what the model raised."""
    failure = ModelFailure(f"{what} failed: {cause}")
    failure.__cause__ = cause
    return failure
