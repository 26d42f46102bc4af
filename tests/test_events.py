"""The event bus: increasing ids, replay with `since`, bounded subscriber queues with gaps."""

from __future__ import annotations

import asyncio
import logging

from sift.events import GAP, BusLogHandler, EventBus


def drain(sub):
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out


def test_ids_increase_from_the_start_time_in_microseconds():
    bus = EventBus(clock=lambda: 1000.0)
    a = bus.publish("x")
    b = bus.publish("y", n=1)
    assert a.id == 1_000_000_000
    assert b.id == a.id + 1
    assert b.data == {"n": 1}
    # A daemon started later gets higher ids, so `since` from before a restart stays meaningful.
    later = EventBus(clock=lambda: 1001.0)
    assert later.publish("x").id > b.id


def test_subscriber_gets_events_after_it_subscribed():
    bus = EventBus(first_id=1)
    bus.publish("before")
    sub = bus.subscribe()
    bus.publish("after")
    assert [e.type for e in drain(sub)] == ["after"]


def test_since_replays_held_events_then_the_live_stream():
    bus = EventBus(first_id=1)
    for i in range(5):
        bus.publish("n", i=i)
    sub = bus.subscribe(since=3)
    bus.publish("n", i=5)
    assert [e.id for e in drain(sub)] == [4, 5, 6]


def test_since_older_than_the_history_starts_with_a_gap():
    bus = EventBus(first_id=1, history=3)
    for _ in range(10):
        bus.publish("n")
    events = drain(bus.subscribe(since=2))
    assert events[0].type == GAP
    assert events[0].data == {"first": 3, "last": 7, "count": 5}
    assert events[0].id == 7  # resuming with since=7 is right after the gap
    assert [e.id for e in events[1:]] == [8, 9, 10]


def test_since_from_before_a_restart_reports_the_missing_range():
    bus = EventBus(first_id=5000)
    bus.publish("n")
    events = drain(bus.subscribe(since=100))
    assert events[0].type == GAP
    assert events[0].data["first"] == 101
    assert events[0].data["last"] == 4999
    assert events[1].id == 5000


def test_since_at_or_past_the_newest_replays_nothing():
    bus = EventBus(first_id=1)
    bus.publish("n")
    assert drain(bus.subscribe(since=1)) == []
    assert drain(bus.subscribe(since=99)) == []


def test_a_slow_subscriber_loses_the_oldest_events_and_gets_one_gap():
    bus = EventBus(first_id=1, queue_size=4)
    sub = bus.subscribe()
    for i in range(10):
        bus.publish("n", i=i)
    events = drain(sub)
    assert events[0].type == GAP
    assert events[0].data == {"first": 1, "last": 6, "count": 6}
    assert [e.id for e in events[1:]] == [7, 8, 9, 10]
    # The bus itself never blocked and other subscribers are unaffected.
    assert bus.last_id == 10


def test_type_prefix_filter():
    bus = EventBus(first_id=1)
    sub = bus.subscribe(types=["peer."])
    bus.publish("peer.connected")
    bus.publish("manifest.published")
    bus.publish("peer.disconnected")
    assert [e.type for e in drain(sub)] == ["peer.connected", "peer.disconnected"]


async def test_get_waits_for_the_next_event_and_ends_when_closed():
    bus = EventBus(first_id=1)
    sub = bus.subscribe()
    waiter = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    bus.publish("x")
    assert (await asyncio.wait_for(waiter, 1)).type == "x"
    bus.close()
    assert bus.subscriber_count == 0
    assert [e async for e in sub] == []


async def test_log_handler_publishes_warnings_from_any_thread():
    bus = EventBus(first_id=1)
    sub = bus.subscribe()
    handler = BusLogHandler(bus, asyncio.get_running_loop())
    logger = logging.getLogger("sift.test-events")
    logger.addHandler(handler)
    try:
        logger.info("not published")
        logger.warning("disk %s", "slow")
        await asyncio.to_thread(logger.error, "from a worker")
        await asyncio.sleep(0.05)
    finally:
        logger.removeHandler(handler)
    events = drain(sub)
    assert [(e.data["level"], e.data["message"]) for e in events] == [
        ("warning", "disk slow"),
        ("error", "from a worker"),
    ]
