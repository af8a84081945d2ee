"""Micro-batching for the server: concurrent requests share one engine call."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger("transferkit.serve")


class Overloaded(Exception):
    pass


@dataclass
class _Job:
    inputs: list[Any]
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Collects concurrent requests into engine calls run by one worker thread."""

    def __init__(self, predict: Callable[[list[Any]], np.ndarray], max_batch: int,
                 max_wait_ms: float, queue_size: int) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ConfigError("--max-batch and --queue-size must be at least 1 and "
                              "--max-wait-ms at least 0.")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-model")
        self.task: asyncio.Task[None] | None = None
        self.batch_sizes: Counter[int] = Counter()  # examples per engine call -> count
        self.requests = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, inputs: list[Any]) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(inputs, future))
        except asyncio.QueueFull:
            raise Overloaded from None
        self.requests += 1
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].inputs)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                if self.queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                else:
                    job = self.queue.get_nowait()
                jobs.append(job)
                size += len(job.inputs)
            # a request cancelled while queued (its client gone, or the shutdown ran out)
            jobs = [job for job in jobs if not job.future.done()]
            if not jobs:
                continue
            inputs = [x for job in jobs for x in job.inputs]
            try:
                proba = await loop.run_in_executor(self.executor, self.predict, inputs)
            except Exception as e:  # a model failure answers these requests, then goes on
                log.exception("prediction failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self.batch_sizes[len(inputs)] += 1
            start = 0
            for job in jobs:
                end = start + len(job.inputs)
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(proba[start:end])
                start = end

    def stats(self) -> dict[str, Any]:
        calls = sum(self.batch_sizes.values())
        examples = sum(k * v for k, v in self.batch_sizes.items())
        return {"requests": self.requests, "model_calls": calls, "examples": examples,
                "mean_batch": examples / calls if calls else 0.0,
                "max_batch_seen": max(self.batch_sizes, default=0),
                "queued": self.queue.qsize()}
