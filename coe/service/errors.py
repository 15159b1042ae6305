"""Every error the service answers, as OpenAI's error object with the right HTTP status, in one table.

ServiceError(status, type, code)            raised by the service itself
coe errors (CoeError subclasses)            mapped by ERROR_STATUS
failed expert answers (Failure.kind)        mapped by `failure_error`
anything else                               500, the details only in the service's log
"""

from __future__ import annotations

from collections.abc import Sequence

from coe.errors import (
    BackendError,
    CoeError,
    ConfigError,
    NotFittedError,
    ProfileError,
    QueryError,
    UnknownExpertError,
    UnknownNameError,
)
from coe.service.served import Served
from coe.types import Failure


class ServiceError(Exception):
    """An error response: status, OpenAI error type and code, the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        answer: Served | None = None,
    ) -> None:
        super().__init__(message)
        self.answer = answer
        """The answer that failed (every expert failed), for the request log and the response."""
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ServiceError:
    return ServiceError(400, message, param=param, code=code)


ERROR_STATUS: tuple[tuple[type[CoeError], int, str, str], ...] = (
    (UnknownExpertError, 400, "invalid_request_error", "unknown_expert"),
    (UnknownNameError, 400, "invalid_request_error", "invalid_value"),
    (QueryError, 400, "invalid_request_error", "invalid_value"),
    (ProfileError, 503, "service_unavailable", "not_ready"),
    (NotFittedError, 503, "service_unavailable", "not_ready"),
    (ConfigError, 400, "invalid_request_error", "invalid_value"),
    (BackendError, 503, "service_unavailable", "no_expert_available"),
)


def from_coe_error(error: CoeError, param: str | None = None) -> ServiceError:
    """A coe error met while serving a request, as its response."""
    for cls, status, kind, code in ERROR_STATUS:
        if isinstance(error, cls):
            return ServiceError(status, str(error), kind=kind, code=code, param=param)
    return ServiceError(500, "internal error", kind="server_error", code="internal_error")


def failure_error(failures: Sequence[Failure]) -> ServiceError:
    """No expert answered: 504 when every failure was a timeout, 400 when the request itself was at
    fault for every expert (too long, refused as bad), else 503 (no expert available)."""
    kinds = {failure.kind for failure in failures}
    detail = "; ".join(dict.fromkeys(str(failure) for failure in failures)) or "no expert was left to ask"
    if kinds == {"timeout"}:
        return ServiceError(504, f"every expert timed out: {detail}", kind="timeout", code="expert_timeout")
    if kinds and kinds <= {"too_long"}:
        return ServiceError(400, detail, param="messages", code="context_length_exceeded")
    if kinds and kinds <= {"too_long", "bad_request"}:
        return ServiceError(400, f"every expert refused the request: {detail}", param="messages")
    return ServiceError(503, f"no expert available: {detail}", kind="service_unavailable", code="no_expert_available")
