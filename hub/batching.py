"""Group commit for the inbound consumer.

FastStream runs one handler per message of a pull batch, concurrently. Each
handler hands its message here and waits; one task takes every message waiting
(in arrival order, which is stream order), processes them one after another in
a single transaction (hub.pipeline.process_inbound_batch), commits once and
answers every handler, which then acks. One commit per pull batch instead of
one per message, and no two transactions about the same person ever run at
once within a worker, so their order holds.

If the batch fails, every handler is told so and handles its message on its
own (hub.bootstrap), so one bad message cannot hold back or poison the rest.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

Process = Callable[[Sequence[tuple[str, bytes]]], Awaitable[list]]


class BatchFailed(Exception):
    """The batch this message was in did not commit (the cause is chained)."""


class GroupCommit:
    def __init__(self, process: Process, *, max_batch: int = 256) -> None:
        self._process = process
        self._max = max_batch
        self._waiting: list[tuple[str, bytes, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inbound-group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for *_, fut in self._waiting:
            if not fut.done():
                fut.set_exception(BatchFailed("the hub is stopping"))
        self._waiting.clear()

    async def submit(self, subject: str, data: bytes):
        """Wait until this message's batch has committed; its InboundResult."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((subject, data, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # The rest of the pull batch is a few steps behind the first message:
            # let it arrive while the queue is still growing.
            for _ in range(20):
                n = len(self._waiting)
                await asyncio.sleep(0)
                if len(self._waiting) == n:
                    break
            batch, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
            if not self._waiting:
                self._wake.clear()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await self._process([(s, d) for s, d, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each handler decides what to do with its message
                failed = BatchFailed(type(exc).__name__)
                failed.__cause__ = exc
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(failed)
                continue
            for (*_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
            log.debug("committed %d inbound messages in %.1f ms", len(batch), 1000 * (time.perf_counter() - started))
