"""A pipeline of stages in threads joined by bounded queues.

``Pipeline(source, [("load", f), ("read", g), ("assemble", h)])`` is a plain
iterable: iterating it starts one thread per stage; the first stage pulls from
``source``, each stage applies its function to the items of the previous one
and hands the result on through a queue of ``depth`` items, and the consumer
(the caller's ``for`` loop, e.g. forward/backward) takes the last stage's
outputs in order. Stages overlap because I/O and numba ``nogil`` kernels and
torch ops release the GIL.

Every stage records its busy time (inside its function) and its wait time
(blocked on an empty input or a full output queue); the consumer's busy time
is the time between two of its ``next()`` calls, its wait time the time it
spent inside them.

Shutdown is clean whatever happens: an exception (or KeyboardInterrupt) in a
stage stops every thread and re-raises in the consumer as
:class:`~diskgnn.errors.PipelineError` naming the stage; an exception in the
consumer (or leaving the loop early) stops and joins the threads too.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from diskgnn.errors import PipelineError

log = logging.getLogger(__name__)

_END = object()    # end of the stream, passed down the queues
_POLL_S = 0.05     # how often a blocked thread checks for shutdown


class _Stopped(Exception):
    """Raised inside a stage thread when the pipeline is shutting down."""


@dataclass(slots=True)
class StageStats:
    """Time accounting of one stage (seconds, summed over items)."""
    busy_s: float = 0.0
    """Time spent doing the stage's work."""
    wait_in_s: float = 0.0
    """Time blocked waiting for an input item (starved)."""
    wait_out_s: float = 0.0
    """Time blocked handing an output to a full queue (back-pressure)."""
    items: int = 0
    """Items processed."""

    @property
    def wait_s(self) -> float:
        return self.wait_in_s + self.wait_out_s

    def as_dict(self) -> dict:
        return {"busy_s": round(self.busy_s, 6), "wait_s": round(self.wait_s, 6),
                "wait_in_s": round(self.wait_in_s, 6), "wait_out_s": round(self.wait_out_s, 6),
                "items": self.items}


class Pipeline:
    """Stages in threads over ``source``; iterate to get the last stage's outputs in order.

    ``stages`` is a sequence of ``(name, fn)``; ``consumer`` names the caller's
    work in :meth:`stats`. A pipeline can be iterated several times; each
    iteration runs the source from the start with fresh threads (stats
    accumulate).
    """

    def __init__(self, source: Iterable, stages: Sequence[tuple[str, Callable[[Any], Any]]], *,
                 depth: int = 2, consumer: str = "compute", name: str = "pipeline"):
        if depth < 1:
            raise ValueError(f"queue depth must be at least 1, got {depth}")
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        names = [n for n, _ in stages] + [consumer]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.source = source
        self.stages = list(stages)
        self.depth = depth
        self.consumer = consumer
        self.name = name
        self._stats = {n: StageStats() for n in names}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: tuple[str, BaseException] | None = None
        self._error_lock = threading.Lock()
        self._running = False

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        chain = " > ".join([n for n, _ in self.stages] + [self.consumer])
        try:
            size = f", items={len(self)}"
        except TypeError:
            size = ""
        return f"Pipeline({self.name!r}: {chain}, depth={self.depth}{size})"

    # --- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        """Per-stage ``{busy_s, wait_s, wait_in_s, wait_out_s, items}``, in pipeline order."""
        return {n: s.as_dict() for n, s in self._stats.items()}

    def reset_stats(self) -> None:
        for s in self._stats.values():
            s.busy_s = s.wait_in_s = s.wait_out_s = 0.0
            s.items = 0

    # --- threads -------------------------------------------------------------------------------

    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = (stage, exc)
        self._stop.set()

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if self._stop.is_set():
                    raise _Stopped from None

    def _run_stage(self, index: int, name: str, fn: Callable, inq: queue.Queue | None,
                   outq: queue.Queue) -> None:
        stats = self._stats[name]
        clock = time.perf_counter
        try:
            items = iter(self.source) if inq is None else None
            while not self._stop.is_set():
                t0 = clock()
                if inq is None:
                    try:
                        item = next(items)
                    except StopIteration:
                        item = _END
                    t1 = clock()
                    stats.busy_s += t1 - t0  # producing source items is this stage's work
                else:
                    item = self._get(inq)
                    t1 = clock()
                    stats.wait_in_s += t1 - t0
                if item is _END:
                    self._put(outq, _END)
                    return
                result = fn(item)
                t2 = clock()
                stats.busy_s += t2 - t1
                stats.items += 1
                self._put(outq, result)
                stats.wait_out_s += clock() - t2
        except _Stopped:
            pass
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the consumer re-raises
            self._fail(name, exc)

    def _start(self) -> queue.Queue:
        if self._running:
            raise RuntimeError(f"{self!r} is already being iterated; a pipeline runs one pass at a time")
        self._stop.clear()
        self._error = None
        self._running = True
        inq = None
        self._threads = []
        for index, (name, fn) in enumerate(self.stages):
            outq: queue.Queue = queue.Queue(maxsize=self.depth)
            t = threading.Thread(target=self._run_stage, args=(index, name, fn, inq, outq),
                                 name=f"{self.name}-{name}", daemon=True)
            self._threads.append(t)
            inq = outq
        for t in self._threads:
            t.start()
        return inq

    def close(self, timeout: float = 10.0) -> None:
        """Stop every stage thread and wait for them (safe to call more than once)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("pipeline thread %s did not stop within %.0f s (a stage call is still running); "
                            "leaving it as a daemon", t.name, timeout)
        self._threads = []
        self._running = False

    def _raise_error(self) -> None:
        stage, exc = self._error  # type: ignore[misc]
        if isinstance(exc, Exception):
            err = PipelineError(f"pipeline stage {stage!r} failed: {type(exc).__name__}: {exc}")
            err.stage = stage  # type: ignore[attr-defined]
            err.cause = exc    # type: ignore[attr-defined]
            raise err from exc
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt(f"interrupted in pipeline stage {stage!r}") from exc
        raise exc

    def __iter__(self):
        clock = time.perf_counter
        t0 = clock()  # thread start-up counts as the consumer's wait for the first item
        last = self._start()
        stats = self._stats[self.consumer]
        try:
            while True:
                while True:
                    if self._error is not None:
                        self._raise_error()
                    try:
                        item = last.get(timeout=_POLL_S)
                        break
                    except queue.Empty:
                        continue
                t1 = clock()
                stats.wait_in_s += t1 - t0
                if item is _END:
                    if self._error is not None:
                        self._raise_error()
                    return
                yield item
                stats.busy_s += clock() - t1
                stats.items += 1
                t0 = clock()
        finally:
            self.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
