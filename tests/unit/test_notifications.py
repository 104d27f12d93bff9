"""The notification listener: subscribes, hands batches to the tracker, re-handshakes and
reconciles, and reads back sends past their deadline.

A real GWS session and listener against the in-process simulator; the tracker is
the real one on a real store. Sends are made as the Send workflow makes them:
registered, forwarded through the session, then accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from daemon.cometd import ConnectionState
from daemon.config import GwsSettings
from daemon.events import SEND_TIMED_OUT, STATE_CHANGED
from daemon.gws.session import GwsSession
from daemon.metrics import Metrics
from daemon.notifications import NotificationListener
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
    gws_session: GwsSession, tracker: Tracker, metrics: Metrics, gws_settings: GwsSettings
) -> AsyncIterator[NotificationListener]:
    """A listener whose `run()` is running, after a login (as the service starts it)."""
    await gws_session.login()
    made = NotificationListener(
        session=gws_session, tracker=tracker, metrics=metrics, settings=gws_settings
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


async def test_close_ends_run_and_leaves_the_subscription(
    gws_session: GwsSession,
    tracker: Tracker,
    metrics: Metrics,
    gws_settings: GwsSettings,
    simulator: Simulator,
    metric_value: Callable[..., float],
) -> None:
    listener = NotificationListener(
        session=gws_session, tracker=tracker, metrics=metrics, settings=gws_settings
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
