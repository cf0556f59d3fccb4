"""Dynamic batching of the reward server: concurrent requests gathered into backbone batches,
scored one batch at a time in a single worker thread (the event loop never blocks)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from robust_rlhf.reward.output import RewardOutput

# The server's logger name, as before this module was split out of it.
log = logging.getLogger("robust_rlhf.integrations.server")


class QueueFull(Exception):
    """The batcher's queue has no room for a request."""


@dataclass
class _Job:
    prompts: list[str]
    responses: list[str]
    future: asyncio.Future
    arrived: float

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class BatcherStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    rejected_queue_full: int = 0
    scorer_errors: int = 0
    busy_s: float = 0.0
    std_sum: float = 0.0
    """Sum of the ensemble std of every text scored (``/health`` reports the mean)."""
    templated: int = 0
    """Chat-templated OpenRLHF queries that were turned into plain text."""
    prompts_cut: int = 0
    """OpenRLHF queries whose prompt the client had cut from the left (scored without its head)."""
    started: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Gather concurrent requests into backbone batches; score them one batch at a time in a thread.

    While the worker scores batch n, requests keep arriving and wait in the queue; when it is
    done they form batch n + 1 at once. When the worker is idle, the first request waits at most
    ``max_wait_s`` for company (or until ``max_batch_size`` texts are waiting). A request larger
    than ``max_batch_size`` forms a batch of its own (the service chunks it). Requests are never
    split across batches, so each gets one consistent answer.

    Args:
        service: the synchronous scorer.
        max_batch_size: texts per gathered batch (soft for a single large request).
        max_wait_s: longest wait for more requests when idle.
        max_queue_items: most texts waiting; `submit` raises `QueueFull` beyond it.
    """

    def __init__(self, service: Callable[[list[str], list[str]], RewardOutput], max_batch_size: int = 64,
                 max_wait_s: float = 0.005, max_queue_items: int = 4096) -> None:
        self.service = service
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self.stats = BatcherStats()
        self._pending: deque[_Job] = deque()
        self._pending_items = 0
        self._in_flight_items = 0
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        """Texts waiting to be scored (not counting the batch being scored)."""
        return self._pending_items

    @property
    def in_flight(self) -> int:
        """Texts in the batch being scored now."""
        return self._in_flight_items

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-scorer")
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reward-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        self._pending_items = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, prompts: list[str], responses: list[str]) -> RewardOutput:
        """Queue one request's texts and wait for its scores.

        Raises:
            QueueFull: the queue has no room for ``len(prompts)`` more texts.
            Exception: whatever the scorer raised for this request.
        """
        if self._task is None or self._wakeup is None:
            raise RuntimeError("batcher is not started")
        n = len(prompts)
        if self._pending_items + n > self.max_queue_items:
            self.stats.rejected_queue_full += 1
            raise QueueFull(f"queue full: {self._pending_items} texts waiting, the limit is "
                            f"{self.max_queue_items} (--max-queue); retry later")
        loop = asyncio.get_running_loop()
        job = _Job(prompts, responses, loop.create_future(), loop.time())
        self._pending.append(job)
        self._pending_items += n
        self.stats.requests += 1
        self._wakeup.set()
        return await job.future

    def _take_batch(self) -> list[_Job]:
        jobs: list[_Job] = []
        total = 0
        while self._pending and (total == 0 or total + len(self._pending[0]) <= self.max_batch_size):
            job = self._pending.popleft()
            self._pending_items -= len(job)
            if job.future.done():  # the client went away; nothing to score
                continue
            jobs.append(job)
            total += len(job)
        return jobs

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._pending_items < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs = self._take_batch()
            if not jobs:
                continue
            try:
                await self._score(jobs)
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("server is shutting down"))
                raise
            except Exception as e:  # never let the loop die: fail these jobs, keep serving
                log.exception("batcher error")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
            finally:
                self._in_flight_items = 0

    async def _score(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        prompts = [p for job in jobs for p in job.prompts]
        responses = [r for job in jobs for r in job.responses]
        self._in_flight_items = len(prompts)
        t0 = time.monotonic()
        try:
            result = await loop.run_in_executor(self._executor, self.service, prompts, responses)
            groups = [(jobs, result)]
        except Exception as e:
            self.stats.scorer_errors += 1
            if len(jobs) == 1:
                log.warning("scoring failed: %s", e)
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(e)
                return
            # One bad request must not fail its neighbours: score each request on its own.
            log.warning("scoring a batch of %d requests failed (%s); retrying them one by one", len(jobs), e)
            groups = []
            for job in jobs:
                try:
                    groups.append(([job], await loop.run_in_executor(self._executor, self.service,
                                                                     job.prompts, job.responses)))
                except Exception as e_job:
                    if not job.future.done():
                        job.future.set_exception(e_job)
        finally:
            self.stats.busy_s += time.monotonic() - t0
        self.stats.batches += 1
        for group, res in groups:
            start = 0
            for job in group:
                if not job.future.done():
                    job.future.set_result(res.slice(start, start + len(job)))
                start += len(job)
                self.stats.items += len(job)
            self.stats.std_sum += float(res.std.double().sum())
