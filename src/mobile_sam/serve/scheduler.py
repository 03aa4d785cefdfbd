"""Who runs the model when: interactive calls first, "everything" jobs in a bounded pool.

* :class:`PriorityLock` lets one model call run at a time. Interactive callers (upload
  embeddings, predicts) take it with ``with lock:``; background callers (the model calls of an
  "everything" job) with ``with lock.background():``, which also waits while any interactive
  caller is waiting. A job takes the lock once per decoder step (and per crop embedding), so
  a click waits for at most one step, never for a whole job.
* :class:`JobPool` runs "everything" jobs on ``workers`` threads with at most ``queue`` more
  waiting; a full pool refuses new jobs (:class:`PoolFull`, an HTTP 503 with Retry-After).
* :class:`Job` is a job's cancel flag: set when its client disconnects, its time limit
  passes or the server stops; the job checks it before each model call and stops there
  (:class:`JobCancelled`).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["Job", "JobCancelled", "JobPool", "PoolFull", "PriorityLock"]

T = TypeVar("T")

# The nice value of job threads (0 = normal, 19 = lowest priority).
JOB_NICENESS = 10


class PriorityLock:
    """A reentrant lock whose interactive waiters go before its background waiters."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._interactive_waiting = 0

    def _acquire(self, interactive: bool) -> None:
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return
            if interactive:
                self._interactive_waiting += 1
                try:
                    self._condition.wait_for(lambda: self._owner is None)
                finally:
                    self._interactive_waiting -= 1
            else:
                self._condition.wait_for(
                    lambda: self._owner is None and self._interactive_waiting == 0)
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("PriorityLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._condition.notify_all()

    def __enter__(self) -> PriorityLock:
        self._acquire(interactive=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextmanager
    def background(self) -> Iterator[None]:
        """Hold the lock as a background caller: after every waiting interactive caller."""
        self._acquire(interactive=False)
        try:
            yield
        finally:
            self.release()


class JobCancelled(Exception):
    """Raised inside a job at its next model call once it is cancelled; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Job:
    """The cancel flag of one background job, checked by the job before each model call."""

    def __init__(self) -> None:
        self._reason: str | None = None

    def cancel(self, reason: str) -> None:
        """Stop the job at its next model call (the first reason given is kept)."""
        if self._reason is None:
            self._reason = reason

    @property
    def cancelled(self) -> str | None:
        """Why the job was cancelled, or None."""
        return self._reason

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if self._reason is not None:
            raise JobCancelled(self._reason)


def _lower_priority() -> None:
    """Make the calling thread yield the CPU to the server's other threads: a job's work
    between model calls (mask post-processing) then slows clicks less. Linux sets the nice
    value per thread; elsewhere this does nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), JOB_NICENESS)
    except (AttributeError, OSError):  # no setpriority (Windows), or not permitted
        pass


class PoolFull(Exception):
    """The pool already holds as many jobs as it may (running plus waiting)."""


class JobPool:
    """Runs background jobs on ``workers`` threads, with at most ``queue`` more waiting."""

    def __init__(self, workers: int = 1, queue: int = 4) -> None:
        self.workers, self.queue = workers, queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="mobile-sam-job",
                                            initializer=_lower_priority)
        self._lock = threading.Lock()
        self._jobs: set[Job] = set()
        self._closed = False

    def __len__(self) -> int:
        """Jobs running or waiting."""
        return len(self._jobs)

    def submit(self, fn: Callable[[Job], T]) -> tuple[Job, Future[T]]:
        """Start ``fn(job)`` when a worker is free; :class:`PoolFull` if the pool is full
        or shut down."""
        job = Job()
        with self._lock:
            if self._closed:
                raise PoolFull("the server is shutting down")
            if len(self._jobs) >= self.workers + self.queue:
                raise PoolFull(f"{len(self._jobs)} jobs are running or waiting (the limit is "
                               f"{self.workers} running plus {self.queue} waiting)")
            self._jobs.add(job)

        def run() -> T:
            job.check()  # cancelled while it waited: never starts
            return fn(job)

        future = self._executor.submit(run)
        future.add_done_callback(lambda _: self._forget(job))
        return job, future

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def cancel_all(self, reason: str) -> None:
        """Cancel every job running or waiting, and refuse new ones."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel(reason)

    def close(self) -> None:
        """Cancel all jobs and let the worker threads end (without waiting for them)."""
        self.cancel_all("the server is shutting down")
        self._executor.shutdown(wait=False, cancel_futures=False)
