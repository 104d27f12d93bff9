"""The notification listener: subscribes, hands batches to the tracker, re-handshakes and
reconciles, and reads back sends past their deadline.

A real GWS session and listener against the in-process simulator; the tracker is
the real one on a real store. Sends are made as the Send workflow makes them:
registered, forwarded through the session, then accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from daemon import notifications
from daemon.cometd import ConnectionState
from daemon.config import GwsSettings
from daemon.errors import GwsUnreachableError
from daemon.events import SEND_TIMED_OUT, STATE_CHANGED
from daemon.gws.session import GwsSession
from daemon.metrics import AccountMetrics, Metrics
from daemon.notifications import LIST_AT_LEAST, NotificationListener
from daemon.sends import SendRecord, new_send_id
from daemon.simulator import Simulator
from daemon.tracker import Tracker
from tests.harness.waiting import wait_until

DEADLINE = 5.0
# A deadline runs from GWS's answer, so even one this short never passes before it.
SHORT_SEND_TIMEOUT = 0.3
REQUESTS = "gws_notifyd_gws_request_duration_seconds_count"


@pytest.fixture
async def listener(
    gws_session: GwsSession,
    tracker: Tracker,
    account_metrics: AccountMetrics,
    metrics: Metrics,
    gws_settings: GwsSettings,
) -> AsyncIterator[NotificationListener]:
    """A listener whose `run()` is running, after a login (as the service starts it)."""
    await gws_session.login()
    made = NotificationListener(
        session=gws_session, tracker=tracker, metrics=account_metrics, settings=gws_settings
    )
    running = asyncio.create_task(made.run(), name="listener")
    try:
        yield made
    finally:
        await made.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, DEADLINE)


@pytest.fixture
async def subscribed(listener: NotificationListener) -> NotificationListener:
    await wait_until(listener.first_subscription.is_set, timeout=DEADLINE, what="subscribed")
    return listener


async def send(tracker: Tracker, session: GwsSession, email_id: str) -> SendRecord:
    """A Send through the simulator: registered before it leaves, accepted on its answer."""
    record = SendRecord(
        send_id=new_send_id(), email_id=email_id, queue_name="Outbound", requested_at=time.time()
    )
    await tracker.register(record)
    body = {
        "operationName": "Send",
        "queueName": "Outbound",
        "email": {"from": "agent@example.com", "to": ["customer@example.com"]},
    }
    answer = await session.email_operation(email_id, orjson.dumps(body), operation="Send")
    assert answer.ok, answer.body
    # None when the notification overtook the answer: the send is resolved already.
    tracker.accepted(record.send_id, answer.reference_id)
    return record


def events_of(committed: list[dict[str, Any]], record: SendRecord) -> list[dict[str, Any]]:
    return [
        event
        for event in committed
        if (event["data"].get("send") or {}).get("sendId") == record.send_id
    ]


class InFlight:
    """How many calls of a patched async method were in progress at once, at most."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    @classmethod
    def patch(
        cls, monkeypatch: pytest.MonkeyPatch, target: object, name: str, *, delay: float = 0.0
    ) -> InFlight:
        """Count `target.name`'s calls; each first waits `delay` (to make overlaps likely)."""
        calls = cls()
        original = getattr(target, name)

        async def counting(*args: Any, **kwargs: Any) -> Any:
            calls.now += 1
            calls.most = max(calls.most, calls.now)
            try:
                if delay:
                    await asyncio.sleep(delay)
                return await original(*args, **kwargs)
            finally:
                calls.now -= 1

        monkeypatch.setattr(target, name, counting)
        return calls


async def test_it_subscribes_and_says_so(
    listener: NotificationListener, simulator: Simulator, metric_value: Callable[..., float]
) -> None:
    await wait_until(listener.first_subscription.is_set, timeout=DEADLINE, what="subscribed")

    assert listener.subscribed is True
    assert metric_value("gws_notifyd_cometd_subscribed") == 1
    assert metric_value("gws_notifyd_cometd_handshakes_total") == 1
    assert simulator.subscriber_count() == 1
    await wait_until(
        lambda: listener.state is ConnectionState.CONNECTED, timeout=DEADLINE, what="connected"
    )
    assert listener.transport == "long-polling"
    # GWS wants the CSRF token on CometD POSTs too: every one carried it.
    assert simulator.bayeux_posts >= 3
    assert simulator.bayeux_posts_without_csrf == 0


async def test_a_send_made_through_the_simulator_produces_its_event_via_the_tracker(
    subscribed: NotificationListener,
    tracker: Tracker,
    gws_session: GwsSession,
    committed: list[dict[str, Any]],
) -> None:
    record = await send(tracker, gws_session, "N-1")

    [event] = await wait_until(
        lambda: events_of(committed, record), timeout=DEADLINE, what="the Send's event"
    )

    assert event["type"] == STATE_CHANGED
    assert event["data"]["state"] == "Sent"
    assert event["data"]["correlated"] is True
    assert event["data"]["reconciled"] is False
    assert event["data"]["notification"]["email"]["id"] == "N-1"
    assert tracker.get(record.send_id) is None


async def test_after_gws_forgets_the_client_it_rehandshakes_and_reconciles_pending_sends(
    subscribed: NotificationListener,
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    simulator.settings.drop_emails.add("N-2")  # sent, but its notification never comes
    record = await send(tracker, gws_session, "N-2")
    assert tracker.get(record.send_id) is record

    simulator.forget_sessions()

    [event] = await wait_until(
        lambda: events_of(committed, record), timeout=DEADLINE, what="the reconciled outcome"
    )
    assert event["data"]["reconciled"] is True
    assert event["data"]["state"] == "Sent"
    assert tracker.get(record.send_id) is None
    assert subscribed.subscribed is True
    assert metric_value("gws_notifyd_cometd_handshakes_total") == 2
    assert simulator.subscriber_count() == 1
    # Re-logged in: a new GWS session needs a new CSRF token and contact-center session.
    assert metric_value(REQUESTS, operation="GetMe", result="ok") == 2
    assert metric_value(REQUESTS, operation="StartContactCenterSession", result="ok") == 2


async def test_the_deadline_loop_reads_back_a_send_past_its_deadline(
    subscribed: NotificationListener,
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    simulator.settings.drop_emails.add("N-4")
    tracker.set_send_timeout(SHORT_SEND_TIMEOUT)

    record = await send(tracker, gws_session, "N-4")

    [event] = await wait_until(
        lambda: events_of(committed, record), timeout=DEADLINE, what="the read-back outcome"
    )
    assert event["type"] == STATE_CHANGED
    assert event["data"]["reconciled"] is True
    assert event["data"]["state"] == "Sent"
    # Counted once the outcome is committed (the event is reported at the commit itself).
    await wait_until(
        lambda: metric_value("gws_notifyd_reconciliations_total", result="resolved") == 1,
        timeout=DEADLINE,
        what="the read-back counted",
    )


async def test_a_send_still_composing_at_its_deadline_is_timed_out(
    subscribed: NotificationListener,
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
) -> None:
    # A failed send leaves the email Composing; its Error notification is dropped.
    simulator.settings.error_emails.add("N-5")
    simulator.settings.drop_emails.add("N-5")
    tracker.set_send_timeout(SHORT_SEND_TIMEOUT)

    record = await send(tracker, gws_session, "N-5")

    [event] = await wait_until(
        lambda: events_of(committed, record), timeout=DEADLINE, what="the time-out"
    )
    assert event["type"] == SEND_TIMED_OUT
    assert event["data"]["state"] == "Composing"
    assert event["data"]["reason"] == "not_sent"


async def test_close_ends_run_and_leaves_the_subscription(
    gws_session: GwsSession,
    tracker: Tracker,
    account_metrics: AccountMetrics,
    metrics: Metrics,
    gws_settings: GwsSettings,
    simulator: Simulator,
    metric_value: Callable[..., float],
) -> None:
    listener = NotificationListener(
        session=gws_session, tracker=tracker, metrics=account_metrics, settings=gws_settings
    )
    running = asyncio.create_task(listener.run())
    await wait_until(listener.first_subscription.is_set, timeout=DEADLINE, what="subscribed")

    await listener.close()
    await asyncio.wait_for(running, DEADLINE)

    assert running.exception() is None
    assert listener.state is ConnectionState.CLOSED
    assert listener.subscribed is False
    assert metric_value("gws_notifyd_cometd_subscribed") == 0
    assert simulator.subscriber_count() == 0


# -- every accepted send ends: the read-back tells why ----------------------------------


@pytest.fixture
async def listener_with(
    gws_session: GwsSession,
    tracker: Tracker,
    account_metrics: AccountMetrics,
    metrics: Metrics,
    gws_settings: GwsSettings,
) -> AsyncIterator[Callable[..., Awaitable[NotificationListener]]]:
    """`await listener_with(give_up_seconds=..., **gws_changes)`: a subscribed listener."""
    running: list[tuple[NotificationListener, asyncio.Task[None]]] = []

    async def make(give_up_seconds: float = 3600.0, **changes: Any) -> NotificationListener:
        await gws_session.login()
        made = NotificationListener(
            session=gws_session,
            tracker=tracker,
            metrics=account_metrics,
            settings=dataclasses.replace(gws_settings, **changes),
            give_up_seconds=give_up_seconds,
        )
        running.append((made, asyncio.create_task(made.run())))
        await wait_until(made.first_subscription.is_set, timeout=DEADLINE, what="subscribed")
        return made

    yield make
    for made, task in running:
        await made.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, DEADLINE)


async def test_a_send_whose_email_left_the_workspace_ends_not_found(
    listener_with: Callable[..., Awaitable[NotificationListener]],
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
) -> None:
    await listener_with()
    simulator.settings.drop_emails.add("N-6")
    simulator.settings.sent_emails_leave = True  # GET answers 404
    tracker.set_send_timeout(SHORT_SEND_TIMEOUT)

    record = await send(tracker, gws_session, "N-6")

    [event] = await wait_until(
        lambda: events_of(committed, record), timeout=DEADLINE, what="the time-out"
    )
    assert event["type"] == SEND_TIMED_OUT
    assert event["data"]["reason"] == "not_found"
    assert event["data"]["state"] is None


async def test_a_send_whose_read_backs_keep_failing_ends_at_the_give_up_time(
    listener_with: Callable[..., Awaitable[NotificationListener]],
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await listener_with(give_up_seconds=0.5)
    simulator.settings.drop_emails.add("N-7")
    tracker.set_send_timeout(SHORT_SEND_TIMEOUT)
    record = await send(tracker, gws_session, "N-7")

    async def failing(_email_id: str) -> dict[str, Any] | None:
        raise GwsUnreachableError("GetEmail: cannot connect")

    monkeypatch.setattr(gws_session, "get_email", failing)
    started = time.monotonic()

    [event] = await wait_until(
        lambda: events_of(committed, record), timeout=DEADLINE, what="the give-up"
    )
    assert event["type"] == SEND_TIMED_OUT
    assert event["data"]["reason"] == "read_back_failed"
    assert time.monotonic() - started < SHORT_SEND_TIMEOUT + 0.5 + 1.5
    assert metric_value("gws_notifyd_reconciliations_total", result="failed") >= 1
    assert tracker.get(record.send_id) is None


@pytest.mark.parametrize(
    ("due", "listings", "gets"), [(LIST_AT_LEAST, 1, 0), (LIST_AT_LEAST - 1, 0, LIST_AT_LEAST - 1)]
)
async def test_many_sends_due_at_once_are_read_back_with_one_listing_a_few_by_get(
    listener_with: Callable[..., Awaitable[NotificationListener]],
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
    due: int,
    listings: int,
    gets: int,
) -> None:
    await listener_with()
    emails = [f"N-8{i}" for i in range(due)]
    simulator.settings.drop_emails.update(emails)
    records = [await send(tracker, gws_session, e) for e in emails]

    tracker.set_send_timeout(0.0)  # all of them due together, at once

    await wait_until(
        lambda: all(events_of(committed, r) for r in records), timeout=DEADLINE, what="outcomes"
    )
    assert all(events_of(committed, r)[0]["data"]["state"] == "Sent" for r in records)
    # A listing is the whole workspace at once: only for many.
    assert metric_value(REQUESTS, operation="ListEmails", result="ok") == listings
    assert metric_value(REQUESTS, operation="GetEmail", result="ok") == gets


async def test_many_sends_due_at_once_are_read_back_a_group_at_a_time(
    listener_with: Callable[..., Awaitable[NotificationListener]],
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 100k pending after a restart must not be 100k read-backs (tasks) at once.
    monkeypatch.setattr(notifications, "READ_BACK_GROUP", 4)
    await listener_with()
    emails = [f"N-G{i}" for i in range(LIST_AT_LEAST + 2)]
    simulator.settings.drop_emails.update(emails)
    records = [await send(tracker, gws_session, e) for e in emails]
    calls = InFlight.patch(monkeypatch, tracker, "read_back")
    tracker.set_send_timeout(0.0)

    await wait_until(
        lambda: all(events_of(committed, r) for r in records), timeout=DEADLINE, what="outcomes"
    )
    assert calls.most == 4  # a whole group together (their writes share a commit), no more
    assert all(events_of(committed, r)[0]["data"]["state"] == "Sent" for r in records)


async def test_read_backs_by_get_are_at_most_read_back_concurrency_at_a_time(
    listener_with: Callable[..., Awaitable[NotificationListener]],
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await listener_with(read_back_concurrency=2)
    emails = [f"N-9{i}" for i in range(6)]
    simulator.settings.drop_emails.update(emails)
    simulator.settings.sent_emails_leave = True  # not listed: a GET each
    records = [await send(tracker, gws_session, e) for e in emails]
    calls = InFlight.patch(monkeypatch, gws_session, "get_email", delay=0.05)
    tracker.set_send_timeout(0.01)

    await wait_until(
        lambda: all(events_of(committed, r) for r in records), timeout=DEADLINE, what="outcomes"
    )
    assert calls.most == 2
    assert {events_of(committed, r)[0]["data"]["reason"] for r in records} == {"not_found"}


async def test_an_error_without_email_ends_the_one_send_with_its_reference_id(
    listener_with: Callable[..., Awaitable[NotificationListener]],
    tracker: Tracker,
    gws_session: GwsSession,
    simulator: Simulator,
    committed: list[dict[str, Any]],
) -> None:
    await listener_with()
    simulator.settings.reference_id_in_answer = True
    simulator.settings.error_emails.add("N-10")
    simulator.settings.error_without_email = True

    record = await send(tracker, gws_session, "N-10")

    [event] = await wait_until(
        lambda: events_of(committed, record), timeout=DEADLINE, what="the Error"
    )
    assert event["data"]["correlated"] is True
    assert event["data"]["notificationType"] == "Error"
    assert event["data"]["emailId"] == "N-10"
    assert "email" not in event["data"]["notification"]
