"""The helper threads of a backend "pycomm" group: who completes the torch futures, and who enforces
the group's timeout on operations nobody waits for.

- **Completions.** torch runs a future's callbacks inside ``set_result``, on the completing thread,
  and a callback may wait for another operation of the same group (DDP's PowerSGD hook all-reduces
  inside its callback and waits). Completing on the group's worker thread would then wait for
  itself. A :class:`CompletionPool` completes each future on a thread of its own: every submission
  claims an idle thread or starts one, so a callback that blocks never holds up a later completion.
  The pool is as large as the deepest nesting of callbacks, in practice one or two threads.
- **Deadlines.** DDP waits on ``Work.get_future()``, not on ``Work.wait()``, so the deadline check in
  ``wait()`` alone would let an operation that never completes block training forever. A
  :class:`Watchdog` fails every operation still running at its deadline (its future gets the
  timeout error) and tells the group, which is broken from then on.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from typing import Any, Callable


class CompletionPool:
    """Runs submitted callables, each on a thread that is free for it (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = 0
        self._threads: list[threading.Thread] = []

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes this task
            else:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-completion-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._queue.put(task)

    def _serve(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                task()
            finally:
                with self._lock:
                    self._idle += 1

    def close(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class Watchdog:
    """Calls ``expire(work)`` for every registered work still running at its deadline."""

    def __init__(self, name: str, expire: Callable[[Any], None]) -> None:
        self._expire = expire
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()
        self._closing = False
        self._thread = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)
        self._thread.start()

    def watch(self, work: Any, deadline: float) -> None:
        with self._condition:
            # Operations finish in order, so finished ones gather at the top: drop them here, or
            # the heap would hold every operation of the last timeout period.
            while self._heap and self._heap[0][2].is_completed():
                heapq.heappop(self._heap)
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline, next(self._order), work))
            if earliest is None or deadline < earliest:
                self._condition.notify()  # the watchdog sleeps until a later deadline: wake it

    def _watch(self) -> None:
        with self._condition:
            while not self._closing:
                while self._heap and self._heap[0][2].is_completed():
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._condition.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                _, _, work = heapq.heappop(self._heap)
                self._expire(work)

    def close(self) -> None:
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout=5.0)
