"""One unit of work for the calls that a worker's greenlets make at about the same moment.

Theory of operation. Under gevent, the greenlets woken by one poll of the event
loop each reach the store at about the same moment. A caller ``submit``s its item
and parks on its own ``Waiter``; one batcher greenlet per store (hence per worker)
takes what is queued (at most ``max_batch`` items), hands it to ``process`` as one
unit of work (an LMDB write transaction, a Redis pipeline), and wakes every caller
with its own answer or exception through one hub callback. The batcher itself wakes
from a hub callback, so it runs after the greenlets made ready by the same poll have
queued their items: that is what fills a batch. While a batch is being processed,
new items queue for the next one.

A subclass defines ``process(batch)``, which must ``deliver`` an answer for every
item of the batch, and ``stopped_error()``; if the batcher greenlet is killed (the
worker exits), every queued caller gets that error instead of waiting forever.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.hub import Waiter, get_hub

#: (caller's waiter, True and the answer, or False and the exception to raise in the caller)
Answer = tuple[Waiter, bool, Any]


class GreenletBatcher:
    max_batch: int | None = None  # items per unit of work; None takes everything queued

    def __init__(self) -> None:
        self._queue: list[tuple[Any, Waiter]] = []
        self._batcher: Any = None  # the batcher greenlet, started on first use
        self._idle: Waiter | None = None  # the batcher's waiter while the queue is empty
        #: units of work run and the items they carried (tests, benchmarks)
        self.batches = 0
        self.items = 0

    def submit(self, item: Any) -> Any:
        """Queue ``item`` for the next unit of work; its answer, or its exception raised here."""
        waiter = Waiter()
        self._queue.append((item, waiter))
        idle = self._idle
        if idle is not None:
            self._idle = None
            get_hub().loop.run_callback(idle.switch, None)
        elif self._batcher is None or self._batcher.dead:  # (dead: killed before it ever ran)
            self._batcher = gevent.spawn(self._run)
        return waiter.get()

    def take_queued(self) -> list[tuple[Any, Waiter]]:
        """Everything still queued (e.g. to fail it with the batch in flight)."""
        items = self._queue[:]
        self._queue.clear()
        return items

    def process(self, batch: list[tuple[Any, Waiter]]) -> None:
        """Run one unit of work and ``deliver`` an answer for each item of ``batch``."""
        raise TypeError(f"{type(self).__name__} must define process()")

    def stopped_error(self) -> BaseException:
        return RuntimeError(f"{type(self).__name__} stopped")

    def fail(self, items: list[tuple[Any, Waiter]], exc: BaseException) -> None:
        """Wake the callers of ``items`` with ``exc`` (a subclass may give each its own copy)."""
        deliver([(w, False, exc) for _, w in items])

    def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._idle = waiter = Waiter()
                    waiter.get()
                    continue
                n = self.max_batch or len(queue)
                batch = queue[:n]
                del queue[:n]
                self.process(batch)
                self.batches += 1
                self.items += len(batch)
        finally:
            # killed (worker exit): nobody must wait for an answer that will not come
            self._batcher = self._idle = None
            self.fail(self.take_queued(), self.stopped_error())


def deliver(answers: list[Answer]) -> None:
    """Wake the callers of a batch, all from one hub callback."""
    if answers:
        get_hub().loop.run_callback(_wake, answers)


def _wake(answers: list[Answer]) -> None:
    for waiter, ok, value in answers:
        if ok:
            waiter.switch(value)
        else:
            waiter.throw(value)
