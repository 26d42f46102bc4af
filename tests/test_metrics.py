"""EWMA rate meters."""

from __future__ import annotations

import pytest

from sift.metrics import RateMeter, RateTable


def test_steady_rate_converges_to_the_true_rate():
    meter = RateMeter(0.0)
    for t in range(1, 31):
        meter.add(1000)
        meter.tick(float(t))
    assert meter.rate == pytest.approx(1000, rel=1e-3)
    assert meter.total == 30_000


def test_rate_decays_to_zero_when_traffic_stops():
    meter = RateMeter(0.0)
    for t in range(1, 11):
        meter.add(10_000)
        meter.tick(float(t))
    meter.tick(11.0)
    assert 0 < meter.rate < 10_000  # the average follows the drop...
    for t in range(12, 14):
        meter.tick(float(t))
    assert meter.rate == 0.0  # ...and reads zero after 3 s without a byte


def test_irregular_ticks_still_measure_bytes_per_second():
    meter = RateMeter(0.0)
    t = 0.0
    for step in [0.5, 2.0, 0.25, 1.0] * 20:
        t += step
        meter.add(int(500 * step))
        meter.tick(t)
    assert meter.rate == pytest.approx(500, rel=0.05)


def test_table_keeps_per_name_direction_and_totals():
    now = [0.0]
    table = RateTable(clock=lambda: now[0])
    for i in range(1, 21):
        table.add("a", "in", 100)
        table.add("b", "in", 300)
        table.add("b", "out", 50)
        now[0] = float(i)
        table.tick()
    assert table.rate("a", "in") == pytest.approx(100, rel=0.01)
    assert table.rate("b", "out") == pytest.approx(50, rel=0.01)
    assert table.total("in") == pytest.approx(400, rel=0.01)
    assert not table.idle
    table.forget("a")
    assert table.rate("a", "in") == 0.0
    for i in range(21, 80):
        now[0] = float(i)
        table.tick()
    assert table.idle
