"""Micro-batching: concurrent requests share one encoder pass and one head pass.

Requests are queued; a single worker takes the first waiting request with everything queued behind it (up to
``max_batch``) and runs the batch function on one dedicated thread (so encoder work never blocks the event
loop and the encoder is never used from two threads at once). While a batch computes, new requests queue up
and form the next batch, so under load batches grow by themselves. Waiting for company pays only when
requests come together: the worker waits up to ``max_wait_s`` for more only when its previous batch held more
than one request; a request that arrives alone while the previous one was alone too runs at once, so a
sequential client never waits (measured on a 2-core CPU: the fixed 2 ms wait was a tenth of a decision's
latency). The queue is bounded: past ``max_queue`` waiting requests :meth:`MicroBatcher.submit` raises
:class:`Overloaded` at once instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """The batch queue is full: the caller should shed the request (HTTP 503)."""


@dataclass
class _Item(Generic[T]):
    payload: T
    future: asyncio.Future = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """Batch concurrent :meth:`submit` calls into calls of ``fn(list_of_payloads) -> list_of_results``.

    Args:
        fn: the batch function, run on the batcher's own thread; it returns one result per payload, in order.
        max_batch: the most payloads per call.
        max_wait_s: how long the first request of a batch waits for company, when the previous batch had some.
        max_queue: requests allowed to wait; more are refused with :class:`Overloaded`.
        on_batch: called on the event loop after each batch with (batch size, seconds in ``fn``).

    When ``fn`` raises for a batch, each payload is retried alone, so one bad request fails only itself.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self.n_batches = 0
        self.n_items = 0
        self.last_batch = 0  # size of the previous batch: > 1 means requests come together, worth waiting for
        self._queue: asyncio.Queue[_Item[T] | None] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-rl-batch")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The batcher's thread: run other encoder work (warm-up, reload checks) here to keep it single-threaded."""
        return self._executor

    @property
    def queued(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="router-rl-batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker and its thread."""
        if self._task is not None and self._queue is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def submit(self, payload: T) -> R:
        if self._queue is None or self._task is None:
            raise RuntimeError("MicroBatcher.submit before start()")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests already wait for a decision (max_queue)")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(payload, future))
        return await future

    async def _gather(self, first: _Item[T]) -> tuple[list[_Item[T]], bool]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch, stop = [first], False
        deadline = loop.time() + (self.max_wait_s if self.last_batch > 1 else 0.0)
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch, stop = await self._gather(first)
            self.last_batch = len(batch)
            live = [item for item in batch if not item.future.done()]  # skip requests whose client left
            if not live:
                continue
            t0 = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self._call, [i.payload for i in live])
            except Exception:  # the whole batch failed: retry one by one so only the culprit fails
                log.warning("batch of %d failed; retrying its requests one by one", len(live), exc_info=True)
                for item in live:
                    try:
                        (result,) = await loop.run_in_executor(self._executor, self._call, [item.payload])
                    except Exception as err:
                        if not item.future.done():
                            item.future.set_exception(err)
                    else:
                        if not item.future.done():
                            item.future.set_result(result)
                continue
            self.n_batches += 1
            self.n_items += len(live)
            if self.on_batch is not None:
                self.on_batch(len(live), loop.time() - t0)
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    def _call(self, payloads: list[T]) -> Sequence[Any]:
        results = self.fn(payloads)
        if len(results) != len(payloads):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(payloads)} payloads")
        return results
