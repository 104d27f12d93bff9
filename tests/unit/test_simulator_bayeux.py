"""The simulator's generic Bayeux server, spoken to in raw Bayeux JSON over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from daemon.simulator.bayeux import BayeuxServer, match_patterns
from daemon.simulator.counters import PeakCounter
from tests.harness.waiting import wait_until

# Long on purpose: a connect that is wrongly held fails on a test deadline
# instead of passing by luck.
LONG_POLL_MS = 30_000
DEADLINE = 5.0
CHANNEL = "/v2/me/emails"


class FakeClock:
    """The sweeper's clock, moved by hand so that expiry needs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    server: BayeuxServer
    http: aiohttp.ClientSession
    url: str
    clock: FakeClock
    timings: dict[str, int] = field(default_factory=dict)

    async def post(
        self,
        body: object,
        *,
        session: str = "s1",
        path: str = "",
        status: int = 200,
        tag: str | None = None,
    ) -> list[dict[str, Any]]:
        headers = {"X-Session": session, "Content-Type": "application/json"}
        if tag is not None:
            headers["X-Tag"] = tag
        async with self.http.post(
            self.url + path, data=orjson.dumps(body), headers=headers
        ) as response:
            assert response.status == status
            assert response.content_type == "application/json"
            answer: list[dict[str, Any]] = orjson.loads(await response.read())
            return answer

    async def handshake(self, session: str = "s1", *, tag: str | None = None) -> str:
        [reply] = await self.post(
            [
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "id": "h",
                    "supportedConnectionTypes": ["long-polling"],
                }
            ],
            session=session,
            tag=tag,
        )
        assert reply["successful"] is True
        client_id: str = reply["clientId"]
        return client_id

    async def subscribe(self, client_id: str, *channels: str) -> None:
        for channel in channels:
            [reply] = await self.post(
                [{"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel}]
            )
            assert reply["successful"] is True, reply

    async def connect(
        self, client_id: str, *, timeout: int | None = None, session: str = "s1", id_: str = "c"
    ) -> list[dict[str, Any]]:
        message: dict[str, Any] = {
            "channel": "/meta/connect",
            "clientId": client_id,
            "connectionType": "long-polling",
            "id": id_,
        }
        if timeout is not None:
            message["advice"] = {"timeout": timeout}
        return await self.post([message], session=session)

    async def listen(self, *channels: str, tag: str | None = None) -> str:
        """Handshake, subscribe and make the first (immediate) connect, as a client does."""
        client_id = await self.handshake(tag=tag)
        await self.subscribe(client_id, *channels)
        batch = await self.connect(client_id, timeout=0)
        assert batch[-1]["successful"] is True
        return client_id


@pytest.fixture
async def bayeux() -> AsyncIterator[Harness]:
    clock = FakeClock()
    timings = {"timeout": LONG_POLL_MS, "max_interval": 10_000}
    server = BayeuxServer(
        long_poll_timeout_ms=lambda: timings["timeout"],
        max_interval_ms=lambda: timings["max_interval"],
        session_of=lambda request: request.headers.get("X-Session"),
        # A handshake's X-Tag header, if any, tags its client.
        tag_of=lambda request: request.headers.get("X-Tag"),
        clock=clock,
    )
    app = web.Application()
    server.add_routes(app, "/cometd")
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/cometd"
    try:
        async with aiohttp.ClientSession() as http:
            yield Harness(server=server, http=http, url=url, clock=clock, timings=timings)
    finally:
        await runner.cleanup()


def data_of(batch: list[dict[str, Any]]) -> list[Any]:
    """The data payloads of a connect answer (everything before the connect reply)."""
    assert batch[-1]["channel"] == "/meta/connect"
    return [message["data"] for message in batch[:-1]]


async def test_handshake_answers_a_client_id_and_long_polling_advice(bayeux: Harness) -> None:
    [reply] = await bayeux.post(
        [
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "id": "7",
                "supportedConnectionTypes": ["long-polling"],
            }
        ]
    )

    assert reply["successful"] is True
    assert reply["id"] == "7"
    assert reply["version"] == "1.0"
    assert reply["supportedConnectionTypes"] == ["long-polling"]
    assert reply["advice"] == {"reconnect": "retry", "interval": 0, "timeout": LONG_POLL_MS}
    assert len(reply["clientId"]) >= 20
    assert await bayeux.handshake() != reply["clientId"]


async def test_subscribe_answers_per_channel_and_forbids_meta(bayeux: Harness) -> None:
    client_id = await bayeux.handshake()

    single = await bayeux.post(
        [{"channel": "/meta/subscribe", "clientId": client_id, "subscription": CHANNEL, "id": "1"}]
    )
    several = await bayeux.post(
        [
            {
                "channel": "/meta/subscribe",
                "clientId": client_id,
                "id": "2",
                "subscription": ["/v2/me/calls", "/meta/connect", "bad"],
            }
        ]
    )

    assert single == [
        {
            "channel": "/meta/subscribe",
            "clientId": client_id,
            "subscription": CHANNEL,
            "successful": True,
            "id": "1",
        }
    ]
    assert [(r["subscription"], r["successful"], r.get("error")) for r in several] == [
        ("/v2/me/calls", True, None),
        ("/meta/connect", False, "403::forbidden"),
        ("bad", False, "400:bad:invalid channel"),
    ]
    assert all(r["id"] == "2" for r in several)
    assert bayeux.server.subscriber_count(CHANNEL) == 1


async def test_first_connect_with_zero_timeout_answers_at_once(bayeux: Harness) -> None:
    client_id = await bayeux.handshake()
    await bayeux.subscribe(client_id, CHANNEL)

    async with asyncio.timeout(DEADLINE):
        batch = await bayeux.connect(client_id, timeout=0, id_="first")

    assert batch == [
        {
            "channel": "/meta/connect",
            "successful": True,
            "clientId": client_id,
            "advice": {"reconnect": "retry", "interval": 0, "timeout": LONG_POLL_MS},
            "id": "first",
        }
    ]


async def test_held_connect_is_answered_with_a_batch_when_a_message_is_published(
    bayeux: Harness,
) -> None:
    client_id = await bayeux.listen(CHANNEL)
    held = asyncio.create_task(bayeux.connect(client_id, id_="held"))
    await wait_until(
        lambda: bayeux.server.held_connects() == 1, timeout=DEADLINE, what="a held connect"
    )
    assert not held.done()

    assert bayeux.server.publish(CHANNEL, [{"n": 1}, {"n": 2}]) == 2
    async with asyncio.timeout(DEADLINE):
        batch = await held

    assert data_of(batch) == [{"n": 1}, {"n": 2}]
    assert all(m["channel"] == CHANNEL for m in batch[:-1])
    assert len({m["id"] for m in batch[:-1]}) == 2
    assert batch[-1]["successful"] is True
    assert batch[-1]["id"] == "held"


async def test_the_whole_queue_comes_in_one_response(bayeux: Harness) -> None:
    client_id = await bayeux.listen(CHANNEL)
    for start in range(0, 5000, 1000):
        bayeux.server.publish(CHANNEL, [{"n": n} for n in range(start, start + 1000)])
    assert bayeux.server.queued(client_id) == 5000

    async with asyncio.timeout(DEADLINE):
        batch = await bayeux.connect(client_id)

    assert data_of(batch) == [{"n": n} for n in range(5000)]
    assert bayeux.server.queued(client_id) == 0


async def test_connect_is_held_for_the_advised_timeout(bayeux: Harness) -> None:
    bayeux.timings["timeout"] = 150
    client_id = await bayeux.listen(CHANNEL)

    started = time.monotonic()
    batch = await bayeux.connect(client_id)

    assert time.monotonic() - started >= 0.14
    assert data_of(batch) == []
    assert batch[-1]["advice"]["timeout"] == 150


async def test_a_second_connect_releases_the_first_without_messages(bayeux: Harness) -> None:
    client_id = await bayeux.listen(CHANNEL)
    first = asyncio.create_task(bayeux.connect(client_id, id_="first"))
    await wait_until(
        lambda: bayeux.server.held_connects() == 1, timeout=DEADLINE, what="a held connect"
    )

    second = asyncio.create_task(bayeux.connect(client_id, id_="second"))
    async with asyncio.timeout(DEADLINE):
        released = await first
    await wait_until(
        lambda: bayeux.server.held_connects() == 1, timeout=DEADLINE, what="a held connect"
    )
    bayeux.server.publish(CHANNEL, ["late"])
    async with asyncio.timeout(DEADLINE):
        delivered = await second

    assert data_of(released) == []
    assert released[-1]["successful"] is True
    assert data_of(delivered) == ["late"]


async def test_unknown_client_gets_402_and_handshake_advice(bayeux: Harness) -> None:
    batch = await bayeux.connect("no-such-client", id_="9")

    assert batch == [
        {
            "channel": "/meta/connect",
            "successful": False,
            "error": "402::Unknown client",
            "advice": {"reconnect": "handshake", "interval": 0},
            "id": "9",
        }
    ]


async def test_a_client_only_answers_to_its_own_session(bayeux: Harness) -> None:
    client_id = await bayeux.handshake(session="s1")

    stranger = await bayeux.connect(client_id, timeout=0, session="s2")
    owner = await bayeux.connect(client_id, timeout=0, session="s1")

    assert stranger[-1]["error"] == "402::Unknown client"
    assert owner[-1]["successful"] is True


async def test_disconnect_releases_the_held_connect_and_forgets_the_client(
    bayeux: Harness,
) -> None:
    client_id = await bayeux.listen(CHANNEL)
    held = asyncio.create_task(bayeux.connect(client_id))
    await wait_until(
        lambda: bayeux.server.held_connects() == 1, timeout=DEADLINE, what="a held connect"
    )

    [reply] = await bayeux.post(
        [{"channel": "/meta/disconnect", "clientId": client_id, "id": "bye"}]
    )
    async with asyncio.timeout(DEADLINE):
        released = await held
    after = await bayeux.connect(client_id, timeout=0)

    assert reply == {
        "channel": "/meta/disconnect",
        "successful": True,
        "clientId": client_id,
        "id": "bye",
    }
    assert released[-1]["advice"]["reconnect"] == "none"
    assert after[-1]["error"] == "402::Unknown client"
    assert bayeux.server.subscriber_count(CHANNEL) == 0


async def test_a_single_object_body_is_accepted(bayeux: Harness) -> None:
    [reply] = await bayeux.post({"channel": "/meta/handshake", "version": "1.0", "id": "x"})

    assert reply["successful"] is True
    assert reply["id"] == "x"


async def test_message_type_appended_to_the_url_is_served(bayeux: Harness) -> None:
    client_id = await bayeux.handshake()

    [reply] = await bayeux.post(
        [{"channel": "/meta/connect", "clientId": client_id, "advice": {"timeout": 0}}],
        path="/connect",
    )

    assert reply["successful"] is True


async def test_invalid_json_is_a_400(bayeux: Harness) -> None:
    async with bayeux.http.post(bayeux.url, data=b"{not json") as response:
        assert response.status == 400
        assert response.content_type == "application/json"


async def test_a_client_that_does_not_come_back_within_max_interval_is_swept(
    bayeux: Harness,
) -> None:
    faithful = await bayeux.listen(CHANNEL)
    lapsed = await bayeux.listen(CHANNEL)

    for _ in range(3):
        bayeux.clock.now += 9.0
        assert (await bayeux.connect(faithful, timeout=0))[-1]["successful"] is True
    gone = await bayeux.connect(lapsed, timeout=0)

    assert gone[-1]["error"] == "402::Unknown client"
    assert bayeux.server.subscriber_count(CHANNEL) == 1


async def test_a_held_connect_keeps_its_client_alive(bayeux: Harness) -> None:
    client_id = await bayeux.listen(CHANNEL)
    held = asyncio.create_task(bayeux.connect(client_id))
    await wait_until(
        lambda: bayeux.server.held_connects() == 1, timeout=DEADLINE, what="a held connect"
    )

    bayeux.clock.now += 60.0
    bayeux.server.publish(CHANNEL, ["still here"])
    async with asyncio.timeout(DEADLINE):
        batch = await held

    assert data_of(batch) == ["still here"]


async def test_wildcards_deliver_once_and_unsubscribe_stops_delivery(bayeux: Harness) -> None:
    client_id = await bayeux.listen("/v2/**", "/v2/me/*", CHANNEL)
    bayeux.server.publish(CHANNEL, ["once"])
    bayeux.server.publish("/v2/other/deep/channel", ["deep"])
    bayeux.server.publish("/elsewhere", ["never"])
    assert data_of(await bayeux.connect(client_id)) == ["once", "deep"]

    for channel in ("/v2/**", "/v2/me/*", CHANNEL):
        [reply] = await bayeux.post(
            [{"channel": "/meta/unsubscribe", "clientId": client_id, "subscription": channel}]
        )
        assert reply["successful"] is True
    bayeux.server.publish(CHANNEL, ["unheard"])

    assert bayeux.server.queued(client_id) == 0


def test_match_patterns() -> None:
    assert match_patterns("/a/b/c") == ["/a/b/c", "/a/b/*", "/a/b/**", "/a/**", "/**"]
    assert match_patterns("/a") == ["/a", "/*", "/**"]


async def test_a_client_publish_reaches_the_subscribers(bayeux: Harness) -> None:
    listener = await bayeux.listen("/chat/room")
    talker = await bayeux.handshake()

    [reply] = await bayeux.post(
        [{"channel": "/chat/room", "clientId": talker, "data": {"text": "hi"}, "id": "p"}]
    )
    [forbidden] = await bayeux.post(
        [{"channel": "/meta/custom", "clientId": talker, "data": {}, "id": "q"}]
    )

    assert reply == {"channel": "/chat/room", "successful": True, "id": "p"}
    assert forbidden["error"] == "403::forbidden"
    assert data_of(await bayeux.connect(listener)) == [{"text": "hi"}]


async def test_close_answers_held_connects_and_stops_holding(bayeux: Harness) -> None:
    client_id = await bayeux.listen(CHANNEL)
    held = asyncio.create_task(bayeux.connect(client_id))
    await wait_until(
        lambda: bayeux.server.held_connects() == 1, timeout=DEADLINE, what="a held connect"
    )

    bayeux.server.close()
    async with asyncio.timeout(DEADLINE):
        released = await held
        not_held = await bayeux.connect(client_id)
    bayeux.server.reopen()

    assert released[-1]["successful"] is True
    assert not_held[-1]["successful"] is True


async def test_stopping_the_server_answers_a_held_connect_quickly() -> None:
    server = BayeuxServer(long_poll_timeout_ms=LONG_POLL_MS)
    app = web.Application()
    server.add_routes(app, "/cometd")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/cometd"

    async with aiohttp.ClientSession() as http:

        async def call(message: dict[str, Any]) -> list[dict[str, Any]]:
            async with http.post(url, data=orjson.dumps([message])) as response:
                answer: list[dict[str, Any]] = await response.json()
                return answer

        [hello] = await call({"channel": "/meta/handshake", "version": "1.0"})
        held = asyncio.create_task(
            call({"channel": "/meta/connect", "clientId": hello["clientId"]})
        )
        await wait_until(
            lambda: server.held_connects() == 1, timeout=DEADLINE, what="a held connect"
        )

        started = time.monotonic()
        await runner.cleanup()
        async with asyncio.timeout(DEADLINE):
            released = await held

    assert time.monotonic() - started < DEADLINE
    assert released[-1]["successful"] is True


# -- tags: publishing to some clients only ------------------------------------------------


async def test_a_tagged_publish_reaches_only_the_subscribers_with_that_tag(
    bayeux: Harness,
) -> None:
    alice = await bayeux.listen(CHANNEL, tag="alice")
    bob = await bayeux.listen(CHANNEL, tag="bob")
    untagged = await bayeux.listen(CHANNEL)
    bob_unsubscribed = await bayeux.handshake(tag="bob")

    to_bob = bayeux.server.publish(CHANNEL, [{"for": "bob"}], tag="bob")
    bayeux.server.publish(CHANNEL, [{"for": "everyone"}])
    bayeux.server.publish(CHANNEL, [{"for": "nobody"}], tag="carol")

    assert to_bob == 1
    assert data_of(await bayeux.connect(bob)) == [{"for": "bob"}, {"for": "everyone"}]
    # Each answer holds the whole queue: the tagged message would come before the other.
    assert data_of(await bayeux.connect(alice)) == [{"for": "everyone"}]
    assert data_of(await bayeux.connect(untagged)) == [{"for": "everyone"}]
    assert bayeux.server.queued(bob_unsubscribed) == 0
    assert bayeux.server.subscriber_count(CHANNEL, tag="bob") == 1
    assert bayeux.server.subscriber_count(CHANNEL) == 3


async def test_a_tagged_publish_honours_wildcard_subscriptions(bayeux: Harness) -> None:
    everything = await bayeux.listen("/v2/me/**", tag="alice")
    calls = await bayeux.listen("/v2/me/calls", tag="alice")

    bayeux.server.publish("/v2/me/chats", [{"n": 1}], tag="alice")
    bayeux.server.publish("/v2/me/calls", [{"n": 2}], tag="alice")

    assert data_of(await bayeux.connect(everything)) == [{"n": 1}, {"n": 2}]
    assert data_of(await bayeux.connect(calls)) == [{"n": 2}]


async def test_a_tagged_clients_own_publish_reaches_its_tag_only(bayeux: Harness) -> None:
    own = await bayeux.listen("/chat/room", tag="alice")
    other = await bayeux.listen("/chat/room", tag="bob")
    talker = await bayeux.handshake(tag="alice")

    await bayeux.post([{"channel": "/chat/room", "clientId": talker, "data": {"text": "hi"}}])
    bayeux.server.publish("/chat/room", [{"text": "all"}])

    assert data_of(await bayeux.connect(own)) == [{"text": "hi"}, {"text": "all"}]
    assert data_of(await bayeux.connect(other)) == [{"text": "all"}]


async def test_subscribed_tags_are_those_with_a_client_subscribed_to_something(
    bayeux: Harness,
) -> None:
    await bayeux.listen(CHANNEL, tag="swept")
    bayeux.clock.now += 11.0  # past max_interval: the next request sweeps it
    await bayeux.listen(CHANNEL, tag="subscribed")
    await bayeux.listen(CHANNEL, "/other", tag="subscribed")
    await bayeux.handshake(tag="handshook-only")
    unsubscribed = await bayeux.listen(CHANNEL, "/other", tag="unsubscribed")
    for channel in (CHANNEL, "/other"):
        await bayeux.post(
            [{"channel": "/meta/unsubscribe", "clientId": unsubscribed, "subscription": channel}]
        )
    gone = await bayeux.listen(CHANNEL, tag="gone")
    await bayeux.post([{"channel": "/meta/disconnect", "clientId": gone}])

    assert bayeux.server.subscribed_tags() == ["subscribed"]
    assert bayeux.server.subscribed_tag_count() == 1


async def test_dropping_a_session_drops_its_clients_only(bayeux: Harness) -> None:
    mine = await bayeux.handshake(session="s1")
    theirs = await bayeux.handshake(session="s2")

    dropped = bayeux.server.drop_session("s1")

    assert dropped == 1
    assert bayeux.server.client_ids() == [theirs]
    assert (await bayeux.connect(mine, timeout=0))[-1]["error"] == "402::Unknown client"


async def test_successful_handshakes_are_counted(bayeux: Harness) -> None:
    for _ in range(3):
        await bayeux.handshake()
    await bayeux.post([{"channel": "/meta/connect", "clientId": "nobody"}])

    assert bayeux.server.handshakes.total == 3
    assert 1 <= bayeux.server.handshakes.peak <= 3


def test_the_peak_is_the_most_events_within_one_wall_clock_second() -> None:
    clock = FakeClock()
    clock.now = 100.9
    counter = PeakCounter(clock=clock)
    counter.add()  # second 100: 1
    clock.now = 101.0
    for _ in range(3):  # second 101: 3
        counter.add()
    clock.now = 101.99
    counter.add()  # second 101: 4
    clock.now = 102.5
    counter.add()  # second 102: 1

    assert (counter.total, counter.peak) == (6, 4)
    counter.reset()
    assert (counter.total, counter.peak) == (0, 0)
    counter.add()  # the same second as before the reset: counted afresh
    assert (counter.total, counter.peak) == (1, 1)
