"""The threads that drive one loaded model: its requests start in arrival order, as many at once as
the model can batch (``concurrency``), the rest queued.

A model without a scheduler runs one generation at a time (its KV state and prefix cache belong
to one generation), so concurrent requests are queued, not interleaved. A batching model
(runtime/scheduler.py) runs up to ``concurrency`` at once, each on its own thread, their forward
passes batched; an endpoint's requests go out concurrently. runtime/registry.py gives each loaded
model exactly one worker. A full queue answers 429 (clients retry with backoff) instead of growing
without bound. A request whose
client goes away (streamed or not: the server passes a ``gone`` probe) stops at its next token,
and the model's generator is closed so its cache entry is released as after any finished request;
one dropped while it still waited never starts, so the requests behind it do not wait for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from slmflow.runtime.errors import SlmflowError


class QueueFullError(SlmflowError):
    """More requests wait for a model than the server accepts."""


class ClientGone(Exception):
    """The client of a queued request left before its turn came; nothing was computed."""


#: How often a waiting or running request asks whether its client is still there.
GONE_POLL_S = 0.2


_DONE = object()


class ModelWorker:
    """A queue in front of a model, served by ``concurrency`` threads. ``run`` and ``stream`` are
    for async callers (the server), ``submit`` for threads; all share the threads and the
    ``max_queue`` bound."""

    def __init__(self, name: str, max_queue: int, concurrency: int = 1) -> None:
        self.name = name
        self.max_queue = max_queue
        self.concurrency = concurrency
        self._own = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"model-{name}",
                                            initializer=self._mark_thread)
        self._waiting = 0
        self._lock = threading.Lock()

    def _mark_thread(self) -> None:
        self._own.is_worker = True

    def call(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` on the model's thread and wait for its result: how in-process callers
        (agents, graph nodes) share the model with served requests. Called from one of the model's
        own threads (a job that runs an agent), it runs in place rather than waiting for itself. Not
        bounded by ``max_queue``: that limit answers HTTP clients, who can retry; a caller in
        the process waits its turn."""
        if getattr(self._own, "is_worker", False):
            return job()
        return self._executor.submit(job).result()

    def _admit(self) -> None:
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFullError(f"{self._waiting} requests already wait for model '{self.name}'",
                                     "retry later")
            self._waiting += 1

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queue ``job`` on the model's thread; its future holds the result."""
        self._admit()

        def task():
            try:
                return job()
            finally:
                self._leave()

        future = self._executor.submit(task)
        future.add_done_callback(lambda f: f.cancelled() and self._leave())  # cancelled before it ran
        return future

    async def run(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` on the model's thread and return its result."""
        return await asyncio.wrap_future(self.submit(job))

    async def finish(self, start: Callable[[], Iterator[Any]],
                     gone: Callable[[], Awaitable[bool]] | None = None) -> Any:
        """The last item of :meth:`stream`: a whole reply, stopped early if ``gone()`` says the
        client left (then :class:`ClientGone` is raised; nobody is there to read a reply)."""
        last = None
        async for item in await self.stream(start, gone):
            last = item
        if gone is not None and await gone():
            raise ClientGone
        return last

    async def stream(self, start: Callable[[], Iterator[Any]],
                     gone: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[Any]:
        """Run ``start()`` on the model's thread, then its iterator, handing items over as they come.

        Errors from ``start()`` (bad schema, prompt too long) are raised before the first item, so
        the caller can still answer with an error status instead of a broken stream. ``gone``, when
        given, is polled every :data:`GONE_POLL_S`: once it says the client left, a request still
        waiting never starts (:class:`ClientGone`) and a running one stops at its next item.
        """
        self._admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        started: asyncio.Future = loop.create_future()
        cancelled = threading.Event()

        def put(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def settle(error: BaseException | None) -> None:
            if not started.done():
                started.set_exception(error) if error else started.set_result(None)

        def task() -> None:
            if cancelled.is_set():  # the client left while the request waited: no work for nobody
                self._leave()
                return
            try:
                iterator = start()
                loop.call_soon_threadsafe(settle, None)
                try:
                    for item in iterator:
                        if cancelled.is_set():
                            break
                        put(item)
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
                put(_DONE)
            except BaseException as err:  # handed to the request, which raises it
                loop.call_soon_threadsafe(settle, err)
                put(err)
            finally:
                self._leave()

        loop.run_in_executor(self._executor, task)
        watcher = loop.create_task(_watch(gone, cancelled, started, put)) if gone is not None else None
        try:
            await started
        except BaseException:  # a refused start, or the request dropped before its turn came
            cancelled.set()
            if watcher is not None:
                watcher.cancel()
            raise
        return _drain(queue, cancelled, watcher)


async def _watch(gone: Callable[[], Awaitable[bool]], cancelled: threading.Event, started: asyncio.Future,
                 put: Callable[[Any], None]) -> None:
    """Mark the request cancelled once its client has left, and wake whoever waits on it."""
    while not cancelled.is_set():
        await asyncio.sleep(GONE_POLL_S)
        if await gone():
            cancelled.set()
            if not started.done():
                started.set_exception(ClientGone())
            put(_DONE)
            return


async def _drain(queue: asyncio.Queue, cancelled: threading.Event,
                 watcher: asyncio.Task | None) -> AsyncIterator[Any]:
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
        if watcher is not None:
            watcher.cancel()
