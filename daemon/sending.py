"""The Send workflow: validate, record, forward, classify. No HTTP here.

Owns what a Send through the daemon means: the body is validated; the send is
written to the store *before* it leaves (so a notification that overtakes
GWS's answer still finds it); it is forwarded; GWS's answer (or its absence)
becomes the send's next state. The result is an outcome that `daemon.api`
maps to an HTTP answer. Operations other than Send pass through unchanged.

Once recorded, a send's bookkeeping finishes even when the integration hangs
up: that part runs shielded from the request's cancellation. But a Send whose
integration has hung up before it left is not forwarded: the integration took
it for failed and may send it again. It is rejected (`send_rejected`, no HTTP
status, `CLIENT_GONE`), which is what happened to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from daemon.config import DEFAULT_ACCOUNT
from daemon.errors import GwsAnswerLostError, GwsUnreachableError, StoreError
from daemon.gws.operations import (
    Invalid,
    Operation,
    SendRequest,
    check_email_id,
    parse_operation,
)
from daemon.gws.session import Answer, GwsSession
from daemon.sends import SendRecord, new_send_id
from daemon.tracker import Tracker

log = structlog.get_logger(logger_name="daemon.sending")

CLIENT_GONE = "not forwarded: the integration closed its connection before the Send left"


@dataclass(frozen=True, slots=True)
class Answered:
    """GWS answered (yes or no). `send_id` is None for a passed-through operation."""

    answer: Answer
    send_id: str | None = None
    reference_id: int | None = None


@dataclass(frozen=True, slots=True)
class NotRecorded:
    """The store could not take the send: it was not forwarded."""

    reason: str


@dataclass(frozen=True, slots=True)
class OutboxFull:
    """Sinks are not keeping up: new sends are refused until they catch up."""


@dataclass(frozen=True, slots=True)
class NeverLeft:
    """GWS could not be reached: it did nothing (a send is rejected)."""

    reason: str
    send_id: str | None = None


@dataclass(frozen=True, slots=True)
class AnswerLost:
    """The request left and no answer came: GWS may have acted (a send stays pending)."""

    reason: str
    send_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClientGone:
    """The integration hung up before the Send left: not forwarded (the send is rejected)."""

    send_id: str


Outcome = Invalid | Answered | NotRecorded | OutboxFull | NeverLeft | AnswerLost | ClientGone


def _never() -> bool:
    return False


class SendWorkflow:
    def __init__(
        self,
        *,
        tracker: Tracker,
        session: GwsSession,
        outbox_full: Callable[[], bool],
        account: str = DEFAULT_ACCOUNT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """One account's Sends (`account`: its name, recorded with each send)."""
        self.account = account
        self._tracker = tracker
        self._session = session
        self._outbox_full = outbox_full
        self._clock = clock
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Sends recorded whose GWS answer has not been handled yet."""
        return self._in_flight

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no send is in flight, at most `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def handle(
        self, email_id: str, raw: bytes, *, client_gone: Callable[[], bool] = _never
    ) -> Outcome:
        """One POST on an email: a Send, or another operation passed through.

        `client_gone` says whether the integration has hung up; it is asked
        right before a Send is forwarded.
        """
        operation = check_email_id(email_id) or parse_operation(raw)
        if isinstance(operation, Invalid):
            log.info(
                "send_invalid",
                email_id=email_id[:80],
                field=operation.field,
                status_message=operation.message,
            )
            return operation
        if isinstance(operation, Operation):
            return await self._pass_through(email_id, raw, operation.name)
        if self._outbox_full():
            log.warning("send_refused_outbox_full", email_id=email_id)
            return OutboxFull()
        # Counted before anything awaits: a drain that starts now waits for it.
        self._in_flight += 1
        self._idle.clear()
        return await asyncio.shield(self._send(email_id, raw, operation, client_gone))

    async def _send(
        self, email_id: str, raw: bytes, request: SendRequest, client_gone: Callable[[], bool]
    ) -> Outcome:
        try:
            return await self._record_and_forward(email_id, raw, request, client_gone)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _record_and_forward(
        self, email_id: str, raw: bytes, request: SendRequest, client_gone: Callable[[], bool]
    ) -> Outcome:
        tracker = self._tracker
        send = SendRecord(
            send_id=new_send_id(),
            email_id=email_id,
            queue_name=request.queue_name,
            requested_at=self._clock(),
            subject=request.subject,
            to=request.to,
            account=self.account,
        )
        try:
            await tracker.register(send)
        except StoreError as exc:
            log.error("send_not_recorded", email_id=email_id, error=str(exc))
            return NotRecorded(str(exc))
        send_id = send.send_id
        if client_gone():
            log.warning(
                "send_not_forwarded", send_id=send_id, email_id=email_id, reason="client_gone"
            )
            await tracker.rejected(
                send_id, status_code=None, status_message=CLIENT_GONE, http_status=None
            )
            return ClientGone(send_id)
        try:
            answer = await self._session.email_operation(email_id, raw, operation="Send")
        except GwsUnreachableError as exc:
            await tracker.rejected(
                send_id, status_code=None, status_message=str(exc), http_status=None
            )
            return NeverLeft(str(exc), send_id)
        except GwsAnswerLostError as exc:
            # GWS may have sent it: it stays pending, resolved by a
            # notification or by GET; the integration can ask /v1/sends/{sendId}.
            await tracker.answer_lost(send_id, str(exc))
            return AnswerLost(str(exc), send_id)
        if answer.ok:
            tracker.accepted(send_id, answer.reference_id)
            reference_id = answer.reference_id
            return Answered(
                answer, send_id, reference_id if reference_id is not None else send.reference_id
            )
        await tracker.rejected(
            send_id,
            status_code=answer.status_code,
            status_message=answer.status_message,
            http_status=answer.http_status,
        )
        return Answered(answer, send_id)

    async def _pass_through(self, email_id: str, raw: bytes, name: str) -> Outcome:
        try:
            answer = await self._session.email_operation(email_id, raw, operation=name)
        except GwsUnreachableError as exc:
            return NeverLeft(str(exc))
        except GwsAnswerLostError as exc:
            return AnswerLost(str(exc))
        return Answered(answer)
