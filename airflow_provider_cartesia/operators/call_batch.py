"""Start and stop Cartesia call batches from a DAG, never dialing anyone twice (see docs/campaigns.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator, XComArg

from airflow_provider_cartesia.api import DEFAULT_CONN_ID
from airflow_provider_cartesia.compat import AirflowFailException, AirflowSkipException, conf
from airflow_provider_cartesia.exceptions import (
    CartesiaCancelError,
    CartesiaCreateOutcomeUnknownError,
    CartesiaError,
    CartesiaResponseError,
    CartesiaServerError,
    is_permanent,
)
from airflow_provider_cartesia.hooks.cartesia import CartesiaHookMixin
from airflow_provider_cartesia.idempotency import (
    Campaign,
    DuplicateRiskError,
    PartsPlan,
    ScanResult,
    parts_report,
    plan_parts,
    recipients_fingerprint,
    scan_for_tagged,
    scan_not_before,
    task_instance_key,
)
from airflow_provider_cartesia.links import CALL_BATCH_ID_XCOM_KEY, CallBatchLink
from airflow_provider_cartesia.models import aware_datetime
from airflow_provider_cartesia.recipients import (
    InvalidRecipientsError,
    load_recipients_from_sql,
    mask_number,
    refused_recipient,
    split_recipients,
    validate_recipients,
)
from airflow_provider_cartesia.sensors.call_batch import WAITING_BATCH_ID_XCOM_KEY, CallBatchWaitMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_cartesia.models import CallBatch

CALL_BATCH_IDS_XCOM_KEY = "cartesia_batch_ids"
"""XCom key of the list of every batch id the create operator created or adopted (pushed before waiting)."""
CALL_BATCH_SUMMARY_XCOM_KEY = "cartesia_batch_summary"
"""XCom key of the settled batch's summary (a list of summaries when split), with ``wait_for_completion``."""
REGIONS = ("US", "EU", "APAC")
RINGING_TIMEOUT_RANGE = (5, 80)
MAX_CALL_DURATION_RANGE = (1, 480)
SCHEDULE_HORIZON = timedelta(days=30)
GATEWAY_STATUSES = frozenset({502, 504})  # a proxy's answer: it may have forwarded the create
DEFAULT_POKE_INTERVAL = 60.0
DEFAULT_WAIT_TIMEOUT = 7 * 24 * 3600.0
VERIFY_DELAY = 5.0  # seconds between the two looks for a create whose outcome is unknown


def _int_in_range(name: str, value: Any, low: int, high: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def _seconds(name: str, value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return seconds


def schedule_problem(scheduled_at: datetime | None, now: datetime) -> str | None:
    """Why Cartesia would refuse ``scheduled_at`` now (in the past, or more than 30 days ahead), or None."""
    if scheduled_at is None:
        return None
    if scheduled_at <= now:
        return f"scheduled_at {scheduled_at.isoformat()} is not in the future (now {now.isoformat(timespec='seconds')})"
    if scheduled_at > now + SCHEDULE_HORIZON:
        return f"scheduled_at {scheduled_at.isoformat()} is more than 30 days ahead"
    return None


def _fail(message: str, exc: BaseException | None = None) -> NoReturn:
    raise AirflowFailException(message) from exc


class RecipientsField:
    """The ``recipients`` template field: rendered in place like any template, stored and shown as a count.

    Airflow stores every rendered template field and shows it in the UI (``str()`` of an object that
    is not JSON); as a nested template field, the numbers and metadata stay on the task object.
    """

    template_fields: Sequence[str] = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        value = self.value
        count = f"{len(value):,} recipient(s)" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}"
        return f"<{count}; not shown: phone numbers and metadata are personal data>"

    __repr__ = __str__


class CreateCallBatchOperator(CallBatchWaitMixin):
    """Create a Cartesia call batch (a campaign of outbound calls), at most once per task instance.

    The batch is named ``<name> [af:<key>.<list>]`` after its task instance and recipient list; a retried
    or cleared task adopts the batch an earlier try created, and a create whose outcome is unknown is
    looked for, never resent. More than 5,000 recipients become several batches of balanced size; a
    retry creates only the missing ones. Everything is validated before the first request; numbers and
    metadata never reach logs, XCom or the rendered-template view. Returns the batch id (the list of ids
    when split); XCom ``cartesia_batch_ids`` holds the list and ``cartesia_batch_id`` the first id (pushed
    before any wait). How and why: docs/campaigns.md.

    **wait_for_completion=True** then waits exactly as
    :class:`~airflow_provider_cartesia.sensors.call_batch.CallBatchSensor` does (same code, rules and
    errors; in this worker or deferred), for each part in turn within one ``timeout``; the link
    points at the part being waited for. The summary (counts only) is pushed under XCom
    ``cartesia_batch_summary`` (a list when split).

    :param name: the batch's label (templated); the tag is appended.
    :param agent_id: the agent that handles the calls (templated).
    :param from_number_id: the phone number id to call from (templated).
    :param recipients: ``[{"to_number": "+1...", "metadata": {...}}, ...]`` (templated; an XComArg such
        as ``task.output``, or JSON text). Exactly one of ``recipients`` and ``recipients_sql``.
    :param recipients_sql: a query returning a ``to_number`` column, optionally a ``metadata`` column (a
        JSON object) and other columns, each a metadata key (templated; may be a ``.sql`` file).
    :param warehouse_conn_id: the SQL connection ``recipients_sql`` runs on (templated).
    :param recipients_sql_parameters: bind parameters of ``recipients_sql`` (templated).
    :param target_concurrency_limit: most calls of the batch at once (>= 1, at most the org's limit).
    :param ringing_timeout_seconds: 5 to 80.
    :param max_call_duration_minutes: 1 to 480.
    :param scheduled_at: when dialing starts (templated): an aware datetime or RFC 3339 text with an
        offset, in the future and within 30 days. None dials at once.
    :param region: ``US``, ``EU`` or ``APAC``, only when ``from_number_id`` is a SIP-trunk number
        (Cartesia refuses it for other numbers with a 400). None: the telephony account's region.
    :param allow_duplicate_numbers: accept a number listed twice (dialed twice). Off by default.
    :param skip_if_no_recipients: skip the task when there are no recipients instead of failing.
    :param cartesia_conn_id: the Airflow connection of type ``cartesia`` (templated).
    :param wait_for_completion: wait until the batch settles before succeeding.
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``).
    :param poke_interval: seconds between two polls while waiting.
    :param timeout: seconds the whole wait may take (default 7 days).
    :param wait_for, success_statuses, failure_statuses, max_consecutive_failures: as on
        :class:`~airflow_provider_cartesia.sensors.call_batch.CallBatchSensor`.
    :param cancel_on_kill: cancel the batches this task created or adopted when the task is killed
        while it runs in a worker (a deferred wait is in the triggerer and is not cancelled).
    """

    template_fields: Sequence[str] = (
        "name",
        "agent_id",
        "from_number_id",
        "recipients",
        "recipients_sql",
        "warehouse_conn_id",
        "recipients_sql_parameters",
        "scheduled_at",
        "cartesia_conn_id",
    )
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"recipients_sql": "sql"}
    operator_extra_links = (CallBatchLink(),)
    ui_color = "#d2e3fc"

    verify_delay: float = VERIFY_DELAY

    def __init__(
        self,
        *,
        name: str,
        agent_id: str,
        from_number_id: str,
        recipients: Any = None,
        recipients_sql: str | None = None,
        warehouse_conn_id: str | None = None,
        recipients_sql_parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        target_concurrency_limit: int | None = None,
        ringing_timeout_seconds: int | None = None,
        max_call_duration_minutes: int | None = None,
        scheduled_at: datetime | str | None = None,
        region: str | None = None,
        allow_duplicate_numbers: bool = False,
        skip_if_no_recipients: bool = False,
        wait_for_completion: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | timedelta = DEFAULT_POKE_INTERVAL,
        timeout: float | timedelta = DEFAULT_WAIT_TIMEOUT,
        cancel_on_kill: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (recipients is None) == (recipients_sql is None):
            raise ValueError("give exactly one of recipients and recipients_sql")
        if recipients_sql is not None and not warehouse_conn_id:
            raise ValueError("recipients_sql needs warehouse_conn_id, the SQL connection to run it on")
        if region is not None and region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        self.name = name
        self.agent_id = agent_id
        self.from_number_id = from_number_id
        self.recipients = RecipientsField(recipients) if recipients is not None else None
        if recipients is not None and not getattr(self, "_BaseOperator__from_mapped", False):
            # Airflow does not look inside the field. A mapped task got its upstreams when it was
            # mapped; its unmapped copy (on 3.0 in the DAG's serialized twin) must not set them again.
            XComArg.apply_upstream_relationship(self, recipients)
        self.recipients_sql = recipients_sql
        self.warehouse_conn_id = warehouse_conn_id
        self.recipients_sql_parameters = recipients_sql_parameters
        self.target_concurrency_limit = _int_in_range("target_concurrency_limit", target_concurrency_limit, 1, None)
        self.ringing_timeout_seconds = _int_in_range(
            "ringing_timeout_seconds", ringing_timeout_seconds, *RINGING_TIMEOUT_RANGE
        )
        self.max_call_duration_minutes = _int_in_range(
            "max_call_duration_minutes", max_call_duration_minutes, *MAX_CALL_DURATION_RANGE
        )
        if not isinstance(scheduled_at, str):
            aware_datetime(scheduled_at, "scheduled_at")  # a datetime is checked now; text once rendered
        self.scheduled_at = scheduled_at
        self.region = region
        self.allow_duplicate_numbers = allow_duplicate_numbers
        self.skip_if_no_recipients = skip_if_no_recipients
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poke_interval = _seconds("poke_interval", poke_interval)
        self.timeout = _seconds("timeout", timeout)
        self.cancel_on_kill = cancel_on_kill
        self._batch_ids: list[str] = []

    # -- execute ------------------------------------------------------------------------------

    def prepare_for_execution(self) -> CreateCallBatchOperator:
        """A copy to run, with a recipients field of its own: rendering fills the field in place."""
        other = super().prepare_for_execution()
        if self.recipients is not None:
            other.recipients = RecipientsField(self.recipients.value)
        return other

    def execute(self, context: Context) -> str | list[str]:
        if not isinstance(self.name, str) or not self.name.strip():
            _fail("name must be a non-empty string")
        try:
            scheduled_at = aware_datetime(self.scheduled_at, "scheduled_at")
        except ValueError as exc:
            _fail(str(exc), exc)
        try:
            recipients = self._recipients()
        except AirflowFailException as exc:
            raise AirflowFailException(f"{exc}. {self._what_exists(context)}") from exc
        parts = split_recipients(recipients)
        sizes = ", ".join(f"{len(p):,}" for p in parts)
        batches = f"{len(parts)} batches of {sizes}" if len(parts) > 1 else "one batch"
        self.log.info("%s recipient(s) validated; %s", f"{len(recipients):,}", batches)
        campaign = self._campaign(context, recipients_fingerprint(recipients), len(parts))
        ti = context["ti"]
        problem = schedule_problem(scheduled_at, datetime.now(timezone.utc))
        if problem and (ti.try_number or 1) <= 1:
            _fail(problem)  # a first try fails before sending anything
        plan = self._plan(campaign)
        if plan.create and problem:
            _fail(f"{problem}; an earlier try created {len(plan.adopt)} of {plan.parts} batch(es)")
        ids = self._create_missing(campaign, plan, parts, scheduled_at)
        ti.xcom_push(key=CALL_BATCH_IDS_XCOM_KEY, value=ids)
        self.publish_batch(context, ids[0])
        if self.wait_for_completion:
            return self._wait(context, ids, 0, [])
        return ids[0] if len(ids) == 1 else ids

    def _recipients(self) -> list[dict[str, Any]]:
        """The validated recipient list (AirflowFailException when invalid: retries cannot fix data)."""
        sql, conn_id = self.recipients_sql, self.warehouse_conn_id
        source = "recipients" if sql is None else f"recipients_sql on connection '{conn_id}'"
        try:
            if sql is None:
                items = self._listed_recipients()
            elif not conn_id:
                _fail("recipients_sql needs warehouse_conn_id")
            else:
                items = load_recipients_from_sql(conn_id, sql, self.recipients_sql_parameters)
            if not items and self.skip_if_no_recipients:
                raise AirflowSkipException(f"No recipients from {source}; nothing to call")
            return validate_recipients(items, allow_duplicate_numbers=self.allow_duplicate_numbers)
        except InvalidRecipientsError as exc:
            _fail(f"{source}: {exc}", exc)

    def _listed_recipients(self) -> list[Any]:
        """The rendered ``recipients`` as a list (JSON text is read)."""
        items = self.recipients.value if self.recipients is not None else None
        if isinstance(items, str):
            try:
                items = json.loads(items)
            except RecursionError:
                _fail("recipients rendered to JSON text nested too deeply to read; flatten the metadata")
            except ValueError:
                _fail(
                    "recipients rendered to text that is not JSON; pass an XComArg (task.output) or a list, "
                    "or set render_template_as_native_obj=True on the DAG"
                )
        if isinstance(items, Mapping) or not isinstance(items, Iterable):
            _fail(f"recipients must be a list of {{to_number, metadata}} objects, got a {type(items).__name__}")
        return list(items)

    def _campaign(self, context: Context, fingerprint: str = "", parts: int = 0) -> Campaign:
        ti = context["ti"]
        run_after = getattr(context.get("dag_run"), "run_after", None)
        key = task_instance_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        return Campaign(key, scan_not_before(run_after), fingerprint, parts)

    def _what_exists(self, context: Context) -> str:
        """For a failure before any create: nothing was sent, or what earlier tries of this task created."""
        if (context["ti"].try_number or 1) <= 1:
            return "No call batch was created"
        try:
            found = self._scan(self._campaign(context)).found
        except CartesiaError as exc:
            return f"This try created no call batch; whether earlier tries did is unknown (listing failed: {exc})"
        if not found:
            return "No call batch was created, by this try or an earlier one"
        ids = ", ".join(f"{t.batch.id} (part {t.part} of {t.parts})" for t in sorted(found, key=lambda t: t.part))
        return f"This try created no call batch; earlier tries of this task created: {ids}"

    def _scan(self, campaign: Campaign, wanted: Collection[int] = ()) -> ScanResult:
        result = scan_for_tagged(self.hook.list_call_batches(agent_id=self.agent_id), campaign, wanted)
        self.log.info(
            "Looked for batches of this task instance (tag key %s) among %d batch(es) of agent %s: found %d",
            campaign.key,
            result.batches_seen,
            self.agent_id,
            len(result.found),
        )
        return result

    def _plan(self, campaign: Campaign) -> PartsPlan:
        try:
            plan = plan_parts(self._scan(campaign, range(1, campaign.parts + 1)).found, campaign)
        except DuplicateRiskError as exc:
            _fail(f"Not creating any call batch: {exc}. Check these batches on Cartesia.", exc)
        for note in plan.notes:
            self.log.warning("%s", note)
        for _part, batch in sorted(plan.adopt.items()):
            self.log.info("Adopting batch %s (%r), created by an earlier try of this task", batch.id, batch.name)
        return plan

    def _create_missing(
        self, campaign: Campaign, plan: PartsPlan, parts: list[list[Any]], scheduled_at: datetime | None
    ) -> list[str]:
        """Create the parts the plan does not adopt; a failure says which parts exist."""
        created = {p: b.id for p, b in plan.adopt.items()}
        for part in plan.create:
            self._batch_ids = list(created.values())  # what on_kill cancels
            first = 1 + sum(len(p) for p in parts[: part - 1])
            try:
                created[part] = self._create_part(campaign, part, parts[part - 1], first, scheduled_at).id
            except Exception as exc:
                if plan.parts == 1:
                    raise
                report = parts_report(created, plan.parts)
                if isinstance(exc, AirflowFailException):
                    raise AirflowFailException(f"{exc}. {report}") from exc
                self.log.error("%s; a retry adopts the created parts and creates the others", report)
                raise
        self._batch_ids = [created[p] for p in range(1, plan.parts + 1)]
        return self._batch_ids

    def _create_part(
        self, campaign: Campaign, part: int, recipients: list[dict[str, Any]], first: int, scheduled_at: datetime | None
    ) -> CallBatch:
        """Create one part (its recipients are #``first``... of the list); find it rather than resend it."""
        name = campaign.part_name(self.name, part)
        self.log.info("Creating call batch %r with %s recipient(s)", name, f"{len(recipients):,}")
        try:
            batch = self.hook.create_call_batch(
                name,
                self.agent_id,
                self.from_number_id,
                recipients,
                target_concurrency_limit=self.target_concurrency_limit,
                ringing_timeout_seconds=self.ringing_timeout_seconds,
                max_call_duration_minutes=self.max_call_duration_minutes,
                scheduled_at=scheduled_at,
                region=self.region,
            )
        except CartesiaError as exc:
            if isinstance(exc, (CartesiaCreateOutcomeUnknownError, CartesiaResponseError)) or (
                isinstance(exc, CartesiaServerError) and exc.status_code in GATEWAY_STATUSES
            ):
                return self._recover(campaign, part, name, exc)
            refused = refused_recipient(exc, len(recipients))
            if refused is not None:
                number = mask_number(recipients[refused]["to_number"])
                _fail(f"Cartesia refused recipient #{first + refused} ({number}) of call batch {name!r}: {exc}", exc)
            if is_permanent(exc):
                _fail(f"Cartesia refused to create call batch {name!r}: {exc}", exc)
            raise  # e.g. a 500: Cartesia says it created nothing; a retry looks first, then creates
        self.log.info("Created call batch %s (%r)", batch.id, name)
        return batch

    def _recover(self, campaign: Campaign, part: int, name: str, cause: BaseException) -> CallBatch:
        """The create may or may not have reached Cartesia: look for it twice; adopt it or fail without retry."""
        self.log.warning("No usable answer to the create of %r (%s); looking for it instead of resending", name, cause)
        errors: list[str] = []
        for attempt in range(2):
            if attempt:
                self._sleep(self.verify_delay)
            try:
                found = self._scan(campaign, (part,)).found
            except CartesiaError as exc:
                errors.append(str(exc))
                continue
            for tagged in found:
                if tagged.of(campaign) and tagged.part == part:
                    self.log.info("Cartesia has it: adopting call batch %s (%r)", tagged.batch.id, name)
                    return tagged.batch
        looked = "could not list the batches (" + "; ".join(errors) + ")" if len(errors) == 2 else "it is not listed"
        _fail(
            f"The create request for call batch {name!r} may have reached Cartesia, but {looked}. It was not "
            "sent again: Cartesia has no idempotency key, and a second create would call every recipient twice. "
            f"Look for a batch named {name!r} on Cartesia, then clear this task: it adopts the batch if it "
            "exists, and creates it otherwise",
            cause,
        )

    # -- waiting (the sensor's code, via CallBatchWaitMixin) ----------------------------------

    def _wait_deadline(self, context: Context) -> float:
        """``timeout`` seconds after this try started (Airflow keeps a try's start across a deferral)."""
        started = getattr(context["ti"], "start_date", None)
        return (started.timestamp() if isinstance(started, datetime) else time.time()) + self.timeout

    def _wait(self, context: Context, ids: list[str], start: int, summaries: list[dict[str, Any]]) -> str | list[str]:
        """Wait for ``ids[start:]`` in turn within one deadline; XCom says where a deferred wait resumes."""
        ti = context["ti"]
        deadline = self._wait_deadline(context)
        for position in range(start, len(ids)):
            self.publish_batch(context, ids[position], WAITING_BATCH_ID_XCOM_KEY)
            if summaries:  # the parts settled so far, for a deferred wait to resume from
                ti.xcom_push(key=CALL_BATCH_SUMMARY_XCOM_KEY, value=summaries)
            remaining = max(deadline - time.time(), 0.0)
            if self.deferrable:
                summary = self.poke_then_defer(ids[position], poll_interval=self.poke_interval, timeout=remaining)
            else:
                summary = self.wait_in_worker(ids[position], poll_interval=self.poke_interval, timeout=remaining)
            summaries = [*summaries, summary]
        ti.xcom_push(key=CALL_BATCH_SUMMARY_XCOM_KEY, value=summaries[0] if len(ids) == 1 else summaries)
        return ids[0] if len(ids) == 1 else ids

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str | list[str]:  # type: ignore[override]
        """Resume after the trigger: judge the event exactly as the sensor does, then wait for the next part."""
        summary = super().execute_complete(context, event)
        ti = context["ti"]
        waited = self.waited_batch_id(context)
        ids = ti.xcom_pull(task_ids=ti.task_id, key=CALL_BATCH_IDS_XCOM_KEY, map_indexes=ti.map_index) or [waited]
        if waited not in ids:
            raise AirflowFailException(f"Resumed waiting for call batch {waited!r}, which this task did not create")
        done: list[dict[str, Any]] = []
        if len(ids) > 1:
            done = list(
                ti.xcom_pull(task_ids=ti.task_id, key=CALL_BATCH_SUMMARY_XCOM_KEY, map_indexes=ti.map_index) or []
            )
        return self._wait(context, ids, ids.index(waited) + 1, [*done, summary] if summary is not None else done)

    # -- kill ---------------------------------------------------------------------------------

    def on_kill(self) -> None:
        """Cancel the batches created or adopted so far, only when ``cancel_on_kill=True``."""
        if not self.cancel_on_kill:
            return
        for batch_id in self._batch_ids:
            try:
                batch = self.hook.cancel_call_batch(batch_id)
            except CartesiaError as exc:
                self.log.error("Could not cancel call batch %s on kill: %s", batch_id, exc)
            else:
                self.log.info("Task killed: cancelled call batch %s (status %s)", batch_id, batch.status)


CANCELLED_XCOM_KEY = "cartesia_cancelled"
"""XCom key of the summaries of the batches a partly failed cancel of several batches did cancel."""


class CancelCallBatchOperator(CartesiaHookMixin, BaseOperator):
    """Stop dialing a call batch's queued recipients; calls in flight finish. Idempotent.

    A batch that is already over is left alone. Returns the batch's summary (counts only), read after
    the cancel; given a list of ids, tries every batch and returns the list of summaries, and fails
    once all were tried if any could not be cancelled (the others' summaries are in XCom
    ``cartesia_cancelled``). Permanent errors fail without retrying. See docs/campaigns.md.

    :param batch_id: the batch id, or a list of ids (templated).
    :param cartesia_conn_id: the Airflow connection of type ``cartesia`` (templated).
    """

    template_fields: Sequence[str] = ("batch_id", "cartesia_conn_id")
    operator_extra_links = (CallBatchLink(),)
    ui_color = "#fce8e6"

    def __init__(self, *, batch_id: str | list[str], cartesia_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.cartesia_conn_id = cartesia_conn_id

    def execute(self, context: Context) -> dict[str, Any] | list[dict[str, Any]]:
        ids = [self.batch_id] if isinstance(self.batch_id, str) else list(self.batch_id or [])
        if not ids or not all(isinstance(i, str) for i in ids):
            _fail(f"batch_id must be a batch id or a list of them, got {self.batch_id!r}")
        context["ti"].xcom_push(key=CALL_BATCH_ID_XCOM_KEY, value=ids[0])
        CallBatchLink.persist(context, self.hook, ids[0])
        summaries: list[dict[str, Any]] = []
        failures: dict[str, BaseException] = {}
        for batch_id in ids:
            try:
                summaries.append(self._cancel(batch_id))
            except CartesiaError as exc:
                self.log.warning("Could not cancel call batch %s: %s", batch_id, exc)
                failures[batch_id] = exc
        single = isinstance(self.batch_id, str)
        if not failures:
            return summaries[0] if single else summaries
        first = next(iter(failures.values()))
        if single:
            message = f"Could not cancel call batch {ids[0]}: {first}"
        else:
            context["ti"].xcom_push(key=CANCELLED_XCOM_KEY, value=summaries)
            reasons = "; ".join(f"{batch_id}: {exc}" for batch_id, exc in failures.items())
            message = (
                f"Could not cancel {len(failures)} of {len(ids)} call batches ({', '.join(failures)}); the other "
                f"{len(ids) - len(failures)} were cancelled or already over. {reasons}"
            )
        if all(is_permanent(exc) for exc in failures.values()):
            _fail(message, first)
        raise first if single else CartesiaCancelError(message, failures=failures)

    def _cancel(self, batch_id: str) -> dict[str, Any]:
        before = self.hook.get_call_batch(batch_id)
        if before.is_terminal:
            self.log.info(
                "Call batch %s is already over (%s); nothing to cancel. %s",
                batch_id,
                before.status,
                before.progress_line(),
            )
            return before.summary()
        self.hook.cancel_call_batch(batch_id)
        after = self.hook.get_call_batch(batch_id)
        self.log.info("Cancelled call batch %s; calls in flight finish. %s", batch_id, after.progress_line())
        return after.summary()
