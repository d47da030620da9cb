"""Bounded worker threads of their own for each blocking part (decoding, account look-ups, file writes).

``asyncio.to_thread`` uses the loop's default pool (``min(32, cores + 4)`` threads, 6 here). A part that
hangs keeps its thread after the call that waited for it has timed out and moved on, so a few hung
look-ups could take every thread of a shared pool and stall every other call's decodes and writes.
Each part therefore has its own pool, sized for the admission limit: every call in progress can have
one piece of work of that part running. Threads are started only when needed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class PartPool:
    def __init__(self, name: str, size: int, *, nice: int = 0) -> None:
        """``nice``: how much lower than the rest of the process this part's threads run (Linux thread
        niceness): bulk work such as decoding yields the cores to the event loop, which paces the calls'
        audio and stops prompts on a barge-in."""
        self.name = name
        self.size = max(1, size)
        self.nice = nice
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on one of this part's threads; the caller bounds the wait."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads(), functools.partial(fn, *args, **kwargs))

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:  # callers on several event loops (the server's, each dialogue locale's)
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.size, thread_name_prefix=f"ivr-{self.name}", initializer=_lower_priority, initargs=(self.nice,)
                )
            return self._executor

    def close(self) -> None:
        """Drop queued work (a later ``run`` starts afresh); a thread stuck in a hung call is left to end
        by itself (a thread cannot be killed)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Make the calling thread ``nice`` steps nicer (lower priority); raising niceness needs no privilege."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
