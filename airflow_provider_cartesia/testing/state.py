"""The simulated account: batches, recipients and call attempts, with progress derived at read time.

Like the real API, nothing runs in the background. Every call attempt is planned when it is queued
(dispatch time, ringing time, talk time, outcome), and its status at any instant follows from the
clock: ``queued`` before its dispatch time, ``dispatched`` while ringing, ``started`` while talking,
then ``completed`` or ``failed``. A batch's status and counters are computed from its recipients'
latest attempts at the moment they are read.

Timing model (all in simulated seconds):

- ``admitted_at = max(created_at, scheduled_at)``. Recipient ``i`` (0-based) of a batch is
  dispatched at ``admitted_at + (i + 1) * dispatch_interval``, so a batch is still ``pending`` in the
  answer to its create. ``target_concurrency_limit`` is stored and echoed, not enforced.
- A retry re-queues the failed recipients; the ``j``-th of them is dispatched at
  ``retry_time + (j + 1) * dispatch_interval``.
- Outcome kinds (``OUTCOME_KINDS``): ``completed`` (rings 2-12 s, talks ``call_seconds``, ends
  ``agent_hangup`` or ``client_hangup``, or ``max_duration`` when capped by
  ``max_call_duration_minutes``), ``no_answer`` (rings ``ringing_timeout_seconds``, fails
  ``dial_no_answer``), ``busy`` (fails ``dial_busy`` after 1-6 s), ``dial_failed`` (fails
  ``dial_failed`` after 0.2-2 s), ``error`` (connects, fails mid-call with ``end_reason`` ``error``)
  and ``pre_dial_failure`` (fails at dispatch: no call record, no ``agent_call_id``, an
  ``error_message`` on the recipient).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

OUTCOME_KINDS = ("completed", "no_answer", "busy", "dial_failed", "error", "pre_dial_failure")

DEFAULT_OUTCOMES: Mapping[str, float] = {
    "completed": 0.62,
    "no_answer": 0.15,
    "busy": 0.08,
    "dial_failed": 0.05,
    "error": 0.04,
    "pre_dial_failure": 0.06,
}

PRE_DIAL_ERRORS = (
    "Number cannot receive calls",
    "Destination number is not reachable from this phone number",
    "Destination number is on the organization's block list",
)
IN_CALL_ERROR = "The call ended because of an internal error"

# Attempt phases (the recipient status of a latest attempt, except "ended")
QUEUED, CANCELLED, DISPATCHED, STARTED, ENDED = "queued", "cancelled", "dispatched", "started", "ended"


def normalize_outcomes(outcomes: Mapping[str, float] | None) -> dict[str, float]:
    """Validate an outcome mix (kind -> weight); None gives the realistic default mix."""
    if outcomes is None:
        return dict(DEFAULT_OUTCOMES)
    unknown = set(outcomes) - set(OUTCOME_KINDS)
    if unknown:
        raise ValueError(f"unknown outcome kinds {sorted(unknown)}; known: {', '.join(OUTCOME_KINDS)}")
    if any(w < 0 for w in outcomes.values()) or sum(outcomes.values()) <= 0:
        raise ValueError("outcome weights must be >= 0 and not all 0")
    return {k: float(w) for k, w in outcomes.items() if w > 0}


@dataclass(frozen=True)
class CallProfile:
    """How the simulated calls of one batch behave."""

    dispatch_interval: float = 1.0
    call_seconds: tuple[float, float] = (20.0, 90.0)
    outcomes: Mapping[str, float] | None = None  # None: DEFAULT_OUTCOMES
    mix: dict[str, float] = field(init=False, repr=False)  # the validated weights

    def __post_init__(self) -> None:
        if self.dispatch_interval < 0:
            raise ValueError("dispatch_interval must be >= 0")
        low, high = self.call_seconds
        if not 0 < low <= high:
            raise ValueError("call_seconds must be (low, high) with 0 < low <= high")
        object.__setattr__(self, "mix", normalize_outcomes(self.outcomes))


def after(when: datetime, seconds: float) -> datetime:
    """``when`` plus ``seconds``, rounded to the millisecond (the API's timestamp precision here)."""
    return when + timedelta(milliseconds=round(seconds * 1000))


def truncate_ms(when: datetime) -> datetime:
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


@dataclass
class Attempt:
    """One call attempt for a recipient, planned when queued."""

    seq: int
    call_id: str | None  # None: fails before dialing, no call record
    queued_at: datetime
    dispatch_at: datetime
    answer_at: datetime | None  # None: never connected
    end_at: datetime
    end_reason: str | None
    final_status: str  # "completed" | "failed"
    error_message: str | None
    call_sid: str
    flavor: int  # picks the transcript and summary

    @property
    def pre_dial(self) -> bool:
        return self.call_id is None

    def cancelled_by(self, cancelled_at: datetime | None) -> bool:
        """Whether a batch cancel at ``cancelled_at`` stopped this attempt before its dispatch."""
        return cancelled_at is not None and self.queued_at <= cancelled_at < self.dispatch_at

    def phase(self, now: datetime, cancelled_at: datetime | None = None) -> str:
        if self.cancelled_by(cancelled_at):
            return CANCELLED
        if now < self.dispatch_at:
            return QUEUED
        if now >= self.end_at:
            return ENDED
        if self.answer_at is not None and now >= self.answer_at:
            return STARTED
        return DISPATCHED


@dataclass
class Recipient:
    """A recipient of a batch."""

    id: str
    to_number: str
    metadata: dict[str, Any] | None
    created_at: datetime
    agent_id: str
    from_number_id: str
    batch: Batch
    attempts: list[Attempt] = field(default_factory=list)
    telephony_account_type: str = "cartesia"

    @property
    def latest(self) -> Attempt:
        return self.attempts[-1]


@dataclass
class Batch:
    seq: int
    id: str
    name: str
    agent_id: str
    from_number_id: str
    region: str
    target_concurrency_limit: int
    ringing_timeout_seconds: int
    max_call_duration_minutes: int
    created_at: datetime
    scheduled_at: datetime | None
    profile: CallProfile
    rng: random.Random
    recipients: list[Recipient] = field(default_factory=list)
    retries: list[datetime] = field(default_factory=list)
    cancelled_at: datetime | None = None

    @property
    def admitted_at(self) -> datetime:
        if self.scheduled_at is None:
            return self.created_at
        return max(self.created_at, self.scheduled_at)


class BatchSnapshot(NamedTuple):
    """A batch's derived state at one instant."""

    status: str
    scheduled: int
    dispatched: int
    finished: int
    last_updated_at: datetime


class BatchTimes(NamedTuple):
    """When a batch reaches its milestones if nobody cancels or retries it (None: never)."""

    admitted_at: datetime
    all_dispatched_at: datetime | None  # the batch turns `completed` (or `failed`)
    all_finished_at: datetime | None  # every dispatched recipient's latest attempt has ended


def snapshot(batch: Batch, now: datetime) -> BatchSnapshot:
    """Status, counters and ``last_updated_at`` of ``batch`` at ``now`` (one pass over the attempts)."""
    dispatched = finished = cancelled = failed_pre_dial = 0
    ever_dispatched = False
    last = batch.created_at
    for moment in [batch.cancelled_at, *batch.retries]:
        if moment is not None and moment <= now:
            last = max(last, moment)
    for recipient in batch.recipients:
        for attempt in recipient.attempts:
            if attempt.cancelled_by(batch.cancelled_at) or attempt.dispatch_at > now:
                continue
            ever_dispatched = True
            last = max(last, attempt.dispatch_at)
            if attempt.end_at <= now:
                last = max(last, attempt.end_at)
        phase = recipient.latest.phase(now, batch.cancelled_at)
        if phase == CANCELLED:
            cancelled += 1
        elif phase != QUEUED:
            dispatched += 1
            if phase == ENDED:
                finished += 1
                if recipient.latest.pre_dial:
                    failed_pre_dial += 1
    total = len(batch.recipients)
    if cancelled:
        status = "cancelled"
    elif not ever_dispatched:
        status = "pending"
    elif dispatched < total:
        status = "in_progress"
    elif failed_pre_dial == total:
        status = "failed"
    else:
        status = "completed"
    return BatchSnapshot(status, total, dispatched, finished, last)


def batch_times(batch: Batch) -> BatchTimes:
    live = [r.latest for r in batch.recipients if not r.latest.cancelled_by(batch.cancelled_at)]
    return BatchTimes(
        admitted_at=batch.admitted_at,
        all_dispatched_at=max((a.dispatch_at for a in live), default=None),
        all_finished_at=max((a.end_at for a in live), default=None),
    )


class SimState:
    """Everything the simulated account holds. Not thread-safe: the simulator serialises access."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.batches: dict[str, Batch] = {}
        self.calls: dict[str, tuple[Recipient, Attempt]] = {}
        self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def new_id(self, prefix: str, rng: random.Random | None = None) -> str:
        return f"{prefix}_{(rng or self.rng).getrandbits(96):024x}"

    # ---- planning ---------------------------------------------------------------------------------

    def _plan(
        self,
        rng: random.Random,
        profile: CallProfile,
        *,
        queued_at: datetime,
        dispatch_at: datetime,
        ringing_timeout_seconds: int,
        max_call_duration_minutes: int,
        kind: str | None = None,
    ) -> Attempt:
        if kind is None:
            kinds = list(profile.mix)
            kind = rng.choices(kinds, weights=[profile.mix[k] for k in kinds])[0]
        low, high = profile.call_seconds
        ring_cap = float(ringing_timeout_seconds)
        call_id: str | None = self.new_id("ac", rng)
        answer_at: datetime | None = None
        error_message: str | None = None
        status = "failed"
        if kind == "pre_dial_failure":
            call_id = None
            end = dispatch_at
            reason: str | None = None
            error_message = rng.choice(PRE_DIAL_ERRORS)
        elif kind == "no_answer":
            end, reason = after(dispatch_at, ring_cap), "dial_no_answer"
        elif kind == "busy":
            end, reason = after(dispatch_at, min(rng.uniform(1.0, 6.0), ring_cap)), "dial_busy"
        elif kind == "dial_failed":
            end, reason = after(dispatch_at, rng.uniform(0.2, 2.0)), "dial_failed"
        else:  # completed, error: the call connects
            answer_at = after(dispatch_at, min(rng.uniform(2.0, 12.0), ring_cap))
            talk = rng.uniform(low, high)
            if kind == "error":
                talk *= rng.uniform(0.1, 0.5)
                reason, error_message = "error", IN_CALL_ERROR
            elif talk >= max_call_duration_minutes * 60:
                talk, reason, status = max_call_duration_minutes * 60.0, "max_duration", "completed"
            else:
                reason = rng.choices(["agent_hangup", "client_hangup"], weights=[7, 3])[0]
                status = "completed"
            end = after(answer_at, talk)
        return Attempt(
            seq=self._next_seq(),
            call_id=call_id,
            queued_at=queued_at,
            dispatch_at=dispatch_at,
            answer_at=answer_at,
            end_at=end,
            end_reason=reason,
            final_status=status,
            error_message=error_message,
            call_sid=f"CA{rng.getrandbits(128):032x}",
            flavor=rng.randrange(1 << 16),
        )

    def _queue(self, recipient: Recipient, attempt: Attempt) -> None:
        recipient.attempts.append(attempt)
        if attempt.call_id is not None:
            self.calls[attempt.call_id] = (recipient, attempt)

    # ---- batches ----------------------------------------------------------------------------------

    def create_batch(
        self,
        *,
        now: datetime,
        name: str,
        agent_id: str,
        from_number_id: str,
        recipients: list[tuple[str, dict[str, Any] | None]],
        profile: CallProfile,
        target_concurrency_limit: int,
        ringing_timeout_seconds: int = 60,
        max_call_duration_minutes: int = 480,
        scheduled_at: datetime | None = None,
        region: str = "US",
        first_outcomes: list[str | None] | None = None,
        telephony_account_type: str = "cartesia",
    ) -> Batch:
        """Queue a batch; ``first_outcomes[i]`` (seeding only) forces recipient i's first outcome kind."""
        batch_rng = random.Random(self.rng.getrandbits(64))
        batch = Batch(
            seq=self._next_seq(),
            id=self.new_id("acb"),
            name=name,
            agent_id=agent_id,
            from_number_id=from_number_id,
            region=region,
            target_concurrency_limit=target_concurrency_limit,
            ringing_timeout_seconds=ringing_timeout_seconds,
            max_call_duration_minutes=max_call_duration_minutes,
            created_at=now,
            scheduled_at=scheduled_at,
            profile=profile,
            rng=batch_rng,
        )
        for index, (to_number, metadata) in enumerate(recipients):
            recipient = Recipient(
                id=self.new_id("acbr", batch_rng),
                to_number=to_number,
                metadata=metadata,
                created_at=now,
                agent_id=agent_id,
                from_number_id=from_number_id,
                batch=batch,
                telephony_account_type=telephony_account_type,
            )
            batch.recipients.append(recipient)
            dispatch_at = after(batch.admitted_at, (index + 1) * profile.dispatch_interval)
            forced = first_outcomes[index] if first_outcomes else None
            self._queue(recipient, self._plan_for(batch, queued_at=now, dispatch_at=dispatch_at, kind=forced))
        self.batches[batch.id] = batch
        return batch

    def _plan_for(
        self, batch: Batch, *, queued_at: datetime, dispatch_at: datetime, kind: str | None = None
    ) -> Attempt:
        return self._plan(
            batch.rng,
            batch.profile,
            queued_at=queued_at,
            dispatch_at=dispatch_at,
            ringing_timeout_seconds=batch.ringing_timeout_seconds,
            max_call_duration_minutes=batch.max_call_duration_minutes,
            kind=kind,
        )

    def batches_newest_first(self) -> list[Batch]:
        return sorted(self.batches.values(), key=lambda b: (b.created_at, b.seq), reverse=True)

    def cancel_batch(self, batch: Batch, now: datetime) -> None:
        """Cancel the recipients not dispatched yet; a no-op if there are none (or it is cancelled)."""
        if batch.cancelled_at is not None:
            return
        if any(r.latest.phase(now) == QUEUED for r in batch.recipients):
            batch.cancelled_at = now

    def retry_batch(self, batch: Batch, now: datetime) -> int:
        """Re-queue recipients whose latest attempt failed; returns how many. The caller checks cancel."""
        requeued = 0
        for recipient in batch.recipients:
            latest = recipient.latest
            if latest.phase(now, batch.cancelled_at) == ENDED and latest.final_status == "failed":
                requeued += 1
                dispatch_at = after(now, requeued * batch.profile.dispatch_interval)
                self._queue(recipient, self._plan_for(batch, queued_at=now, dispatch_at=dispatch_at))
        batch.retries.append(now)
        return requeued

    # ---- calls ------------------------------------------------------------------------------------

    def visible_call(self, call_id: str, now: datetime) -> tuple[Recipient, Attempt] | None:
        """The call record ``call_id`` if it exists at ``now`` (dialed, not cancelled beforehand)."""
        found = self.calls.get(call_id)
        if found is None:
            return None
        recipient, attempt = found
        cancelled_at = recipient.batch.cancelled_at
        if attempt.phase(now, cancelled_at) in (QUEUED, CANCELLED):
            return None
        return found

    def calls_newest_first(self, now: datetime) -> list[tuple[Recipient, Attempt]]:
        """Every call record visible at ``now``, newest start time first."""
        visible = [found for cid in self.calls if (found := self.visible_call(cid, now)) is not None]
        visible.sort(key=lambda ra: (ra[1].dispatch_at, ra[1].seq), reverse=True)
        return visible
