"""Reading a batch's progress from the batch list: counters only, and one request for many waits.

``GET /agents/calls/batches/{id}`` answers with every recipient (844 KB for 5,000 of them); the list
``GET /agents/calls/batches?agent_id=...`` shows the same batch without recipients (about 450 bytes),
newest first, up to 100 per page: status and ``total_calls_*`` are all that "settled?" needs. A wait
reads its counters from the list and does one full GET only when they say the wait is over (or the
list does not show the batch): that GET stays the authoritative end and gives the summary.

- :class:`ListScan`: the pure page walk, shared by the sync hook (sensor pokes) and the async poller.
- :class:`BatchListPoller`: in the triggerer, every wait of one event loop on one (connection,
  agent) shares one poller, so 1,000 waits cost one walk of the agent's list per interval instead of
  1,000 GETs. Airflow shares nothing between deferral triggers (only event triggers get shared
  streams), hence this small piece of our own. See docs/waiting.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_cartesia.models import CallBatch

if TYPE_CHECKING:
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import CallBatchPage

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

    A wait :meth:`join` s with its interval, then calls :meth:`read` whenever it is due: reads that
    arrive within one interval are answered by one walk (a *round*), so waits with the same interval
    fall into step after their first round. Rounds are at least the shortest joined interval apart
    (doubled after each failed round, up to :data:`MAX_BACKOFF_FACTOR` times), except for an
    ``urgent`` read (a wait at its deadline). A failed walk raises its error in every read it
    served: each wait counts it once against its own budget. The poller's task ends when the last
    wait leaves, or with its event loop.
    """

    def __init__(
        self,
        hook: CartesiaHook,
        agent_id: str,
        now: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        page_size: int = LIST_PAGE_SIZE,
        max_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self.hook = hook
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
                page = await self.hook.alist_call_batch_page(self.agent_id, self.page_size, scan.cursor)
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


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], BatchListPoller]] = (
    weakref.WeakKeyDictionary()
)


def poller_for(
    hook: CartesiaHook,
    agent_id: str,
    now: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> BatchListPoller:
    """The poller of this event loop for (``hook``'s connection, ``agent_id``); made on first use."""
    loop = asyncio.get_running_loop()
    for closed in [other for other in _POLLERS if other.is_closed()]:
        del _POLLERS[closed]
    pollers = _POLLERS.setdefault(loop, {})
    key = (hook.cartesia_conn_id, agent_id)
    poller = pollers.get(key)
    if poller is None:
        poller = pollers[key] = BatchListPoller(hook, agent_id, now, sleep)
    return poller


def active_pollers() -> dict[Any, BatchListPoller]:
    """The pollers of the running event loop (for tests and benchmarks)."""
    return dict(_POLLERS.get(asyncio.get_running_loop(), {}))


def _forget(poller: BatchListPoller, closing: bool) -> None:
    """Drop an idle poller (or any poller of a closing loop) from the registry."""
    with contextlib.suppress(RuntimeError):
        pollers = _POLLERS.get(asyncio.get_running_loop(), {})
        key = (poller.hook.cartesia_conn_id, poller.agent_id)
        if pollers.get(key) is poller and (closing or not poller.intervals):
            del pollers[key]
