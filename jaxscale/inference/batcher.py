"""A bounded queue that gathers concurrent requests into batches for one model.

Requests wait in an asyncio queue of at most `max_queue`; a full queue refuses new ones at once
(the caller answers 503) rather than letting latency grow without bound. One worker takes the
first waiting request, gathers whatever else arrives within `max_wait_s` up to `max_batch`, and
runs the batch in a thread, so the event loop keeps accepting requests meanwhile.
"""

import asyncio
from collections.abc import Callable


class QueueFull(Exception):
  """The queue holds `max_queue` requests already."""


class Batcher:

  def __init__(self, run_batch: Callable[[list], list], *, max_batch: int, max_queue: int,
               max_wait_s: float = 0.005):
    if max_batch < 1 or max_queue < 1:
      raise ValueError(f'max_batch and max_queue must be >= 1; got {max_batch}, {max_queue}.')
    self._run_batch = run_batch
    self.max_batch, self.max_queue, self._max_wait_s = max_batch, max_queue, max_wait_s
    self._queue: asyncio.Queue | None = None
    self.batches_run = 0
    self.requests_served = 0

  @property
  def waiting(self) -> int:
    return self._queue.qsize() if self._queue else 0

  async def submit(self, item):
    """The result of `item`, once its batch has run; raises QueueFull or the batch's error."""
    future = asyncio.get_running_loop().create_future()
    try:
      self._queue.put_nowait((item, future))
    except asyncio.QueueFull:
      raise QueueFull(f'{self.max_queue} requests are already waiting; retry shortly.') from None
    return await future

  async def run(self):
    """The worker: runs until cancelled."""
    self._queue = asyncio.Queue(maxsize=self.max_queue)
    loop = asyncio.get_running_loop()
    while True:
      batch = [await self._queue.get()]
      deadline = loop.time() + self._max_wait_s
      while len(batch) < self.max_batch:
        try:
          batch.append(self._queue.get_nowait())
        except asyncio.QueueEmpty:  # Polled, not awaited with a timeout: no request is lost.
          if loop.time() >= deadline:
            break
          await asyncio.sleep(0.001)
      items, futures = zip(*batch)
      try:
        results = await loop.run_in_executor(None, self._run_batch, list(items))
      except Exception as e:  # The batch's error goes to its callers; the worker lives on.
        for future in futures:
          if not future.done():
            future.set_exception(e)
        continue
      self.batches_run += 1
      self.requests_served += len(items)
      for future, result in zip(futures, results):
        if not future.done():  # A client that went away has cancelled its future.
          future.set_result(result)
