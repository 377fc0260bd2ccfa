"""CallBatchSensor: wait until a Cartesia call batch settles, in poke, reschedule or deferrable mode."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_cartesia.api import DEFAULT_CONN_ID
from airflow_provider_cartesia.compat import AirflowFailException, AirflowSkipException, conf
from airflow_provider_cartesia.links import CallBatchLink
from airflow_provider_cartesia.models import WaitFor
from airflow_provider_cartesia.waiting import (
    DEFAULT_FAILURE_STATUSES,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_SUCCESS_STATUSES,
    CallBatchWaitError,
    CallBatchWaitMixin,
    WaitCriteria,
    scheduled_wait,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

RESCHEDULE_RETRY_WAIT = 60.0
"""In reschedule mode, the longest wait in the worker before polling again after a failed poll."""


class CallBatchSensor(CallBatchWaitMixin, BaseSensorOperator):
    """Wait until a Cartesia call batch settles; return its summary (counts, never recipients) as XCom.

    Polls read the batch's counters from its agent's batch list (a few hundred bytes, no recipients)
    once the agent is known, and read the batch itself (every recipient) only for the first poke, a
    batch under 100 recipients, or to confirm that it settled (see docs/waiting.md).

    ``completed`` only means every recipient was *dispatched*: with ``wait_for="finished"`` (the
    default) the sensor also waits until every dispatched call has ended. A status in
    ``failure_statuses`` raises :class:`~airflow.sdk.exceptions.AirflowFailException` with the counts,
    so ``soft_fail`` skips the task the same way in every mode. An unknown status keeps the wait going
    (one warning). Each poll logs a line such as ``acb_1 in_progress: 1,234 of 5,000 calls finished
    (24.7%), 3,100 dispatched``.

    Polls that fail after the hook's own retries (429, 5xx, network) are tolerated up to
    ``max_consecutive_failures`` in a row; then :class:`~airflow_provider_cartesia.waiting.CallBatchWaitError`
    fails the task and its ``retries`` apply. 401, 403, 404 and 400 fail at once, saying what to check.
    In reschedule mode, where nothing survives from one poke to the next, a poke whose poll failed
    polls again in the same process every ``min(poke_interval, 60 s)`` until a poll succeeds or the
    budget is spent (holding the worker slot only while the API keeps failing).

    A batch whose ``scheduled_at`` lies ahead is next polled ``min(poke_interval, 60 s)`` before it:
    poke mode sleeps until then, reschedule mode is rescheduled for then (both capped at the timeout),
    the trigger sleeps until then.

    ``deferrable=True``: poke once, then defer to
    :class:`~airflow_provider_cartesia.triggers.call_batch.CallBatchTrigger` with the absolute deadline
    ``now + timeout``; the trigger polls every ``poke_interval`` seconds on the async hook.
    ``exponential_backoff`` works in every mode (Airflow's formula in poke and reschedule mode; a plain
    doubling, capped by ``max_wait``, in the trigger).

    :param batch_id: the call batch to wait for (templated), e.g.
        ``"{{ ti.xcom_pull(task_ids='create_batch', key='cartesia_batch_id') }}"``.
    :param cartesia_conn_id: the Airflow connection of type ``cartesia`` (templated).
    :param wait_for: ``"finished"`` (every dispatched call ended) or ``"dispatched"`` (terminal status).
    :param success_statuses: terminal statuses that succeed (default ``("completed",)``).
    :param failure_statuses: terminal statuses that fail (default ``("failed", "cancelled")``).
    :param max_consecutive_failures: failed polls in a row tolerated before the wait fails (default 5).
    :param deferrable: defer to the triggerer between polls (default ``[operators] default_deferrable``).
    :param agent_id: the batch's agent, if known (templated). Optional: the first read tells it. Given,
        every poke reads the batch's counters from the agent's batch list (no recipients) from the
        first one on, reschedule mode included, where nothing else survives from one poke to the next.
    """

    template_fields = ("batch_id", "cartesia_conn_id", "agent_id")
    operator_extra_links = (CallBatchLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        batch_id: str,
        cartesia_conn_id: str = DEFAULT_CONN_ID,
        wait_for: WaitFor = "finished",
        success_statuses: Collection[str] = DEFAULT_SUCCESS_STATUSES,
        failure_statuses: Collection[str] = DEFAULT_FAILURE_STATUSES,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        agent_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.agent_id = agent_id
        self.cartesia_conn_id = cartesia_conn_id
        self.wait_criteria = WaitCriteria.of(wait_for, success_statuses, failure_statuses, max_consecutive_failures)
        self.wait_for = self.wait_criteria.wait_for
        self.success_statuses = self.wait_criteria.success_statuses
        self.failure_statuses = self.wait_criteria.failure_statuses
        self.max_consecutive_failures = max_consecutive_failures
        self.deferrable = deferrable

    def execute(self, context: Context) -> Any:
        CallBatchLink.persist(context, self.batch_id)
        if not self.deferrable:
            return super().execute(context)
        with self._ending_as_a_poke_would():
            return self.poke_then_defer(
                self.batch_id,
                poll_interval=self.poke_interval,
                timeout=self.timeout,
                exponential_backoff=self.exponential_backoff,
                max_wait=self.max_wait.total_seconds() if self.max_wait else None,
            )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with self._ending_as_a_poke_would():
            return super().execute_complete(context, event)

    @contextmanager
    def _ending_as_a_poke_would(self) -> Iterator[None]:
        """Apply ``soft_fail`` and ``never_fail`` as BaseSensorOperator.execute does to a poke's exceptions.

        The deferrable path's first poke runs outside that loop, and Airflow's resume path skips only
        Airflow exceptions; this keeps every mode alike.
        """
        try:
            yield
        except AirflowFailException as exc:
            if self.soft_fail or self.never_fail:
                raise AirflowSkipException(f"Skipping: {exc}") from exc
            raise
        except CallBatchWaitError as exc:
            if self.never_fail:
                raise AirflowSkipException(f"Skipping: {exc}") from exc
            raise

    def waited_batch_id(self, context: Context) -> str:
        """The (rendered) ``batch_id``."""
        return self.batch_id

    def poke(self, context: Context) -> PokeReturnValue:
        verdict = self.poll_batch(self.batch_id)
        if self.reschedule:
            # Nothing survives from one reschedule poke to the next, so a failed poll is repeated here
            # until one succeeds or max_consecutive_failures is spent, as the other modes would.
            watch = self.batch_watch(self.batch_id)
            while verdict.outcome == "waiting" and watch.consecutive_failures:
                time.sleep(min(self.poke_interval, RESCHEDULE_RETRY_WAIT))
                verdict = self.poll_batch(self.batch_id)
        summary = self.conclude_wait(verdict)
        return PokeReturnValue(is_done=summary is not None, xcom_value=summary)

    def _get_next_poke_interval(
        self,
        started_at: datetime | float,
        run_duration: Callable[[], float],
        poke_count: int,
    ) -> float:
        """Airflow's interval, stretched to shortly before a future ``scheduled_at`` (capped at the timeout).

        BaseSensorOperator sleeps this long in poke mode and reschedules this far ahead in reschedule
        mode, so neither polls a batch that cannot have started.
        """
        interval: float = super()._get_next_poke_interval(started_at, run_duration, poke_count)
        watch = self.__dict__.get("_cartesia_batch_watch")
        wait = scheduled_wait(watch.last_batch if watch else None, self.poke_interval, time.time())
        if wait is None or wait <= interval:
            return interval
        remaining = self.timeout - run_duration()
        self.log.info("Call batch %s is scheduled for later; next poke in %.0f s", self.batch_id, min(wait, remaining))
        return max(min(wait, remaining), interval)
