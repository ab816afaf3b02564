"""The threaded stage pipeline: order, accounting, bounded queues and clean shutdown."""
from __future__ import annotations

import threading
import time

import pytest

from diskgnn.errors import DiskGNNError, PipelineError
from diskgnn.pipeline import Pipeline


def live_threads(name):
    return [t for t in threading.enumerate() if t.name.startswith(name + "-") and t.is_alive()]


def test_outputs_in_order_with_len_and_repr():
    p = Pipeline(range(37), [("double", lambda x: 2 * x), ("plus", lambda x: x + 1)], name="order")
    assert len(p) == 37
    assert repr(p) == "Pipeline('order': double > plus > compute, depth=2, items=37)"
    assert list(p) == [2 * i + 1 for i in range(37)]
    stats = p.stats()
    assert list(stats) == ["double", "plus", "compute"]
    assert stats["double"]["items"] == stats["plus"]["items"] == stats["compute"]["items"] == 37
    assert not live_threads("order")


def test_iterating_twice_reruns_the_source():
    p = Pipeline([3, 1, 4], [("id", lambda x: x)], name="twice")
    assert list(p) == [3, 1, 4]
    assert list(p) == [3, 1, 4]
    assert p.stats()["id"]["items"] == 6


def test_busy_time_is_counted_per_stage():
    p = Pipeline(range(5), [("slow", lambda x: time.sleep(0.02) or x), ("fast", lambda x: x)], name="busy")
    for _ in p:
        time.sleep(0.01)
    s = p.stats()
    assert s["slow"]["busy_s"] >= 5 * 0.02  # sleep never returns early
    assert s["compute"]["busy_s"] >= 4 * 0.01  # the last item's work is counted on the next next()
    assert s["fast"]["busy_s"] < s["slow"]["busy_s"]
    # the fast stage spends its time waiting for the slow one
    assert s["fast"]["wait_s"] > s["fast"]["busy_s"]


def test_queues_are_bounded():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    class Source:
        def __iter__(self):
            return source()

        def __len__(self):
            return 100

    p = Pipeline(Source(), [("a", lambda x: x), ("b", lambda x: x)], depth=2, name="bounded")
    it = iter(p)
    assert next(it) == 0
    time.sleep(0.3)  # let the stages run ahead as far as the queues allow
    # consumer holds 1, each of 2 queues holds <= 2, each stage thread holds <= 1
    assert 2 <= len(pulled) <= 1 + 2 * 2 + 2
    it.close()
    assert not live_threads("bounded")


def test_error_in_a_stage_names_it_and_stops_all_threads():
    def boom(x):
        if x == 7:
            raise OSError("disk on fire")
        return x

    p = Pipeline(range(1000), [("load", lambda x: x), ("read", boom), ("assemble", lambda x: x)], name="err")
    seen = []
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match=r"stage 'read' failed: OSError: disk on fire") as info:
        for x in p:
            seen.append(x)
    assert time.monotonic() - t0 < 30  # no hang (generous: machines are shared)
    assert isinstance(info.value, DiskGNNError) and info.value.stage == "read"
    assert isinstance(info.value.__cause__, OSError)
    assert seen == list(range(len(seen))) and len(seen) <= 7
    assert not live_threads("err")


def test_error_in_the_source_names_the_first_stage():
    def source():
        yield 1
        raise ValueError("bad batch index")

    class Source:
        def __iter__(self):
            return source()

    p = Pipeline(Source(), [("load", lambda x: x)], name="srcerr")
    with pytest.raises(PipelineError, match="stage 'load' failed: ValueError: bad batch index"):
        list(p)
    assert not live_threads("srcerr")


def test_keyboard_interrupt_in_a_stage_is_reraised():
    def interrupted(x):
        if x == 2:
            raise KeyboardInterrupt
        return x

    p = Pipeline(range(50), [("load", lambda x: x), ("read", interrupted)], name="kbd")
    with pytest.raises(KeyboardInterrupt, match="stage 'read'"):
        list(p)
    assert not live_threads("kbd")


def test_error_in_consumer_stops_the_stages():
    p = Pipeline(range(1000), [("load", lambda x: x), ("read", lambda x: x)], name="consumer")
    with pytest.raises(ZeroDivisionError):
        with p:
            for x in p:
                if x == 3:
                    1 / 0
    assert not live_threads("consumer")


def test_early_break_stops_the_stages():
    p = Pipeline(range(1000), [("load", lambda x: x)], name="brk")
    for x in p:
        if x == 2:
            break
    p.close()
    assert not live_threads("brk")
    assert p.stats()["load"]["items"] < 1000


def test_bad_arguments():
    with pytest.raises(ValueError):
        Pipeline([], [])
    with pytest.raises(ValueError):
        Pipeline([], [("a", id), ("a", id)])
    with pytest.raises(ValueError):
        Pipeline([], [("a", id)], depth=0)
