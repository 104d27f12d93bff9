"""What GWS answered: the `Answer` of a REST call, and the errors made of it.

Owns reading an answer (statusCode, statusMessage, referenceId, success),
turning a failed one into `GwsRequestError`, and telling a refusal of the
credentials from other failures. Plain code over values: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from daemon.errors import GwsRequestError


@dataclass(frozen=True, slots=True)
class Answer:
    """A GWS answer as it came: HTTP status, parsed body (if JSON) and raw bytes."""

    http_status: int
    body: Any
    raw: bytes
    content_type: str

    def _integer(self, key: str) -> int | None:
        value = self.body.get(key) if isinstance(self.body, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def status_code(self) -> int | None:
        return self._integer("statusCode")

    @property
    def status_message(self) -> str | None:
        if isinstance(self.body, dict):
            message = self.body.get("statusMessage")
            return message if isinstance(message, str) else None
        return None

    @property
    def reference_id(self) -> int | None:
        return self._integer("referenceId")

    @property
    def ok(self) -> bool:
        return 200 <= self.http_status < 300 and self.status_code in (0, None)


def is_refusal(exc: GwsRequestError) -> bool:
    """Whether a failed login means the credentials were refused (never retry fast)."""
    # 401/403 to Basic auth; statusCode 8 (password change demanded), 20 (not authenticated).
    return exc.http_status in (401, 403) or exc.status_code in (8, 20)


T = TypeVar("T")


def field(answer: Answer, key: str, kind: type[T], operation: str) -> T:
    """`answer.body[key]` of the expected kind, from a successful answer."""
    raise_unless_ok(answer, operation)
    value = answer.body.get(key) if isinstance(answer.body, dict) else None
    if not isinstance(value, kind):
        raise GwsRequestError(
            operation=operation,
            http_status=answer.http_status,
            status_code=None,
            status_message=f"answer has no {key!r} {kind.__name__}",
        )
    return value


def failure_of(answer: Answer, operation: str) -> GwsRequestError | None:
    if answer.ok:
        return None
    return GwsRequestError(
        operation=operation,
        http_status=answer.http_status,
        status_code=answer.status_code,
        status_message=answer.status_message,
        body=answer.body,
    )


def raise_unless_ok(answer: Answer, operation: str) -> None:
    failure = failure_of(answer, operation)
    if failure is not None:
        raise failure
