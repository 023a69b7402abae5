"""A thread pool whose calls have a deadline, for work that may hang: an environment step that
never returns, a local model that ignores its timeout.

`concurrent.futures.ThreadPoolExecutor` cannot give up on a call: a hung call holds its thread
forever, and the interpreter joins the executor's threads at exit (`threading._register_atexit`),
so one hung call also blocks exit, Ctrl-C included. Here every worker is a daemon thread of our
own that nothing ever joins. A call still running at its deadline (counted from its start, not
from its submission) is abandoned: its future fails with `DeadlineExceeded` (a TimeoutError),
its thread is written off and replaced, and whatever the thread returns later is dropped.

Deadlines are enforced by whoever waits (`wait_any`, `wait_all`, `expire`), so no watchdog thread
is needed: the caller never waits past the earliest deadline of what is running.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any


class DeadlineExceeded(TimeoutError):
    """A call ran past its deadline and was abandoned (its failure's reason: `timeout`)."""


class DeadlinePool:
    """`workers` daemon threads; each call may run `deadline_s` seconds (`why`: how that deadline
    is set, for the failure's message). `on_abandon(thread)` is called (by the waiting thread, so
    it must not block) for each thread written off."""

    def __init__(
        self,
        workers: int,
        deadline_s: float,
        name: str = "call",
        why: str = "",
        on_abandon: Callable[[threading.Thread], None] | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        self._name, self._why = name, why
        self._on_abandon = on_abandon
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[Future, tuple[threading.Thread, float]] = {}  # future -> (thread, deadline)
        self._abandoned: set[threading.Thread] = set()
        self._count = itertools.count()
        self._workers = workers
        for _ in range(workers):
            self._spawn()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def abandoned(self, thread: threading.Thread | None = None) -> bool:
        """Whether the thread (default: the current one) was written off after a deadline."""
        return (thread or threading.current_thread()) in self._abandoned

    def expire(self) -> int:
        """Abandon every call past its deadline; how many were."""
        now = time.monotonic()
        with self._lock:
            overdue = [(f, t) for f, (t, deadline) in self._running.items() if deadline <= now]
            for future, thread in overdue:
                del self._running[future]
                self._abandoned.add(thread)
        for future, thread in overdue:
            self._spawn()  # the window keeps its width
            why = f" ({self._why})" if self._why else ""
            future.set_exception(
                DeadlineExceeded(
                    f"the {self._name} ran past its deadline of {self.deadline_s:g}s{why}; abandoned"
                )
            )
            if self._on_abandon is not None:
                self._on_abandon(thread)
        return len(overdue)

    def wait_any(self, futures: Iterable[Future]) -> None:
        """Return once one of `futures` is done (a call past its deadline is done: failed)."""
        futures = list(futures)
        while True:
            self.expire()
            pending = [f for f in futures if not f.done()]
            if not pending or len(pending) < len(futures):
                return
            wait(pending, timeout=self._until_next_deadline(), return_when=FIRST_COMPLETED)

    def wait_all(self, futures: Iterable[Future]) -> None:
        pending = [f for f in futures if not f.done()]
        while pending:
            self.wait_any(pending)
            pending = [f for f in pending if not f.done()]

    def shutdown(self) -> None:
        """Stop the workers once their calls return; never waits (a hung thread stays hung, as a
        daemon). Calls not started are cancelled."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in range(self._workers):
            self._jobs.put(None)

    def _until_next_deadline(self) -> float:
        with self._lock:
            deadlines = [deadline for _, deadline in self._running.values()]
        # Nothing running yet: a call may start right after this, with a deadline no sooner than this.
        return max(0.0, min(deadlines) - time.monotonic()) + 0.01 if deadlines else self.deadline_s

    def _spawn(self) -> None:
        name = f"{self._name}-{next(self._count)}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        me = threading.current_thread()
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running[future] = (me, time.monotonic() + self.deadline_s)
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the future's owner
                result, error = None, exc
            with self._lock:
                mine = self._running.pop(future, None) is not None
            if not mine:  # abandoned at its deadline, and replaced: this thread is done
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
