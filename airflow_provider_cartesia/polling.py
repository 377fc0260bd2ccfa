"""Reading a batch's progress from the batch list: counters only, and one request for many waits.

A GET of a batch carries every recipient (844 KB for 5,000); the list shows it in about 450 bytes.
A wait reads the list's counters and does one GET only to confirm an end (see docs/waiting.md):
:class:`ListScan` is the pure page walk (sync hook and async poller), :class:`BatchListPoller`
lets every deferred wait of one event loop on one (connection, agent) share one walk per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_provider_cartesia.models import CallBatch, CallBatchPage

PageFetch = Callable[[str, int, "str | None"], Awaitable[CallBatchPage]]
"""``(agent_id, limit, starting_after) -> page``: the async hook's ``alist_call_batch_page``."""

LIST_PAGE_SIZE = 100
"""Batches per list page in the triggerer's shared walk (the API's maximum)."""
SYNC_LIST_PAGE_SIZE = 20
"""Batches per list page for one sensor poke (about 9 KB: the waited batch is usually among the newest)."""
MAX_LIST_PAGES = 10
"""Pages walked before a batch the list has not shown is read with its own GET instead."""
LIST_MIN_RECIPIENTS = 100
"""A sensor poke reads the list only for batches at least this big; a smaller GET costs less than a page."""
MAX_BACKOFF_FACTOR = 8
"""After failed rounds, the poller's interval doubles, up to this many times the usual one."""


class ListScan:
    """A walk through list pages, newest first, until every wanted batch was seen (pure, no I/O).

    Stops early when a page ends older than the oldest wanted batch still missing (later pages hold
    only older batches), when the list has no more pages, or after ``max_pages``.
    """

    def __init__(self, wanted: Mapping[str, datetime | None], max_pages: int = MAX_LIST_PAGES) -> None:
        self.wanted = dict(wanted)
        self.max_pages = max_pages
        self.found: dict[str, CallBatch] = {}
        self.pages = 0
        self.cursor: str | None = None

    @property
    def missing(self) -> list[str]:
        return [batch_id for batch_id in self.wanted if batch_id not in self.found]

    def add(self, page: CallBatchPage) -> bool:
        """Take one page; True when the next page is worth fetching (its cursor is :attr:`cursor`)."""
        self.pages += 1
        for batch in page.data:
            if batch.id in self.wanted:
                self.found[batch.id] = batch
        missing = self.missing
        if not missing or not page.has_more or not page.data or self.pages >= self.max_pages:
            return False
        created = [self.wanted[batch_id] for batch_id in missing]
        last = page.data[-1].created_at
        if last is not None and all(c is not None for c in created) and last < min(c for c in created if c):
            return False
        self.cursor = page.next_page or page.data[-1].id
        return True


@dataclass
class _Read:
    batch_id: str
    created_at: datetime | None
    urgent: bool
    answer: asyncio.Future[tuple[CallBatch | None, float]] = field(repr=False)


class BatchListPoller:
    """The shared list walk of one (connection, agent) on one event loop.

    Reads that arrive within one interval are answered by one walk (a *round*); rounds are at least
    the shortest joined interval apart (doubled after failed rounds, up to :data:`MAX_BACKOFF_FACTOR`),
    except for an ``urgent`` read (a wait at its deadline). A failed walk raises in every read it
    served. The poller's task ends when the last wait leaves, or with its event loop.
    """

    def __init__(
        self,
        fetch_page: PageFetch,
        key: Any,
        agent_id: str,
        now: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        page_size: int = LIST_PAGE_SIZE,
        max_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self.fetch_page = fetch_page
        self.key = key
        self.agent_id = agent_id
        self.now = now
        self.sleep = sleep
        self.page_size = page_size
        self.max_pages = max_pages
        self.intervals: dict[int, float] = {}
        self.pending: list[_Read] = []
        self.last_round: float | None = None
        self.failed_rounds = 0
        self.rounds = 0
        self.requests = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tokens = 0

    def join(self, interval: float) -> int:
        """Register a wait; returns the token to :meth:`leave` with."""
        self._tokens += 1
        self.intervals[self._tokens] = interval
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"cartesia-poller-{self.agent_id}")
        return self._tokens

    def leave(self, token: int) -> None:
        """A wait ended or was cancelled; the last one to leave stops the poller."""
        self.intervals.pop(token, None)
        self._wakeup.set()

    async def read(
        self, batch_id: str, created_at: datetime | None, *, urgent: bool = False
    ) -> tuple[CallBatch | None, float]:
        """The batch as the next round's walk saw it (None: not shown) and when that round started."""
        answer: asyncio.Future[tuple[CallBatch | None, float]] = asyncio.get_running_loop().create_future()
        read = _Read(batch_id, created_at, urgent, answer)
        self.pending.append(read)
        self._wakeup.set()
        try:
            return await answer
        finally:
            with contextlib.suppress(ValueError):
                self.pending.remove(read)

    def _next_round_at(self) -> float:
        if self.last_round is None or any(r.urgent for r in self.pending):
            return self.now()
        gap = min(self.intervals.values(), default=0.0)
        return self.last_round + gap * min(2**self.failed_rounds, MAX_BACKOFF_FACTOR)

    async def _run(self) -> None:
        cancelled = False
        try:
            while self.intervals:
                if not self.pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                delay = self._next_round_at() - self.now()
                if delay > 0:
                    await self._sleep_or_wakeup(delay)
                    continue
                await asyncio.sleep(0)  # let every wait due at this instant join the round
                await self._round()
        except asyncio.CancelledError:
            cancelled = True  # the event loop is closing
            raise
        finally:
            for read in self.pending:
                if not read.answer.done():
                    read.answer.cancel()
            _forget(self, cancelled)

    async def _sleep_or_wakeup(self, delay: float) -> None:
        """Sleep until the next round, or until a read arrives (it may be urgent)."""
        self._wakeup.clear()
        sleeping = asyncio.ensure_future(self.sleep(delay))
        woken = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({sleeping, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, woken):
                task.cancel()

    async def _round(self) -> None:
        reads, self.pending = self.pending, []
        started = self.last_round = self.now()
        self.rounds += 1
        wanted = {read.batch_id: read.created_at for read in reads}
        scan = ListScan(wanted, max_pages=self.max_pages)
        try:
            while True:
                self.requests += 1
                page = await self.fetch_page(self.agent_id, self.page_size, scan.cursor)
                if not scan.add(page):
                    break
        except Exception as exc:  # a CartesiaError after the hook's retries, or a bug: every read sees it
            self.failed_rounds += 1
            for read in reads:
                if not read.answer.done():
                    read.answer.set_exception(exc)
            return
        self.failed_rounds = 0
        for read in reads:
            if not read.answer.done():
                read.answer.set_result((scan.found.get(read.batch_id), started))


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, BatchListPoller]] = weakref.WeakKeyDictionary()


def poller_for(
    fetch_page: PageFetch,
    conn_key: str,
    agent_id: str,
    now: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> BatchListPoller:
    """The poller of this event loop for (``conn_key``, ``agent_id``); made on first use."""
    loop = asyncio.get_running_loop()
    for closed in [other for other in _POLLERS if other.is_closed()]:
        del _POLLERS[closed]
    pollers = _POLLERS.setdefault(loop, {})
    key = (conn_key, agent_id)
    poller = pollers.get(key)
    if poller is None:
        poller = pollers[key] = BatchListPoller(fetch_page, key, agent_id, now, sleep)
    return poller


def active_pollers() -> dict[Any, BatchListPoller]:
    """The pollers of the running event loop (for tests and benchmarks)."""
    return dict(_POLLERS.get(asyncio.get_running_loop(), {}))


def _forget(poller: BatchListPoller, closing: bool) -> None:
    """Drop an idle poller (or any poller of a closing loop) from the registry."""
    with contextlib.suppress(RuntimeError):
        pollers = _POLLERS.get(asyncio.get_running_loop(), {})
        if pollers.get(poller.key) is poller and (closing or not poller.intervals):
            del pollers[poller.key]
