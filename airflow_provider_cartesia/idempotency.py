"""A call batch at most once per task instance: names carry a tag that later tries find (docs/campaigns.md)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from airflow_provider_cartesia.models import CallBatch, utc

CLOCK_SKEW_MARGIN = timedelta(hours=1)  # the clocks of Airflow's database and Cartesia may disagree
_TAG = re.compile(r"(?: \((?P<part>\d+)/(?P<parts>\d+)\))? \[af:(?P<key>[0-9a-f]{12})\.(?P<fp>[0-9a-f]{6})\]$")
_NEVER = datetime.max.replace(tzinfo=timezone.utc)


class DuplicateRiskError(Exception):
    """What an earlier try created cannot be completed without risking a second call to someone."""


def task_instance_key(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """The same 12 hex digits for every try of one task instance; different for another run or map index."""
    identity = json.dumps([dag_id, task_id, run_id, -1 if map_index is None else int(map_index)])
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def recipients_fingerprint(recipients: Sequence[Mapping[str, Any]]) -> str:
    """6 hex digits that change when a recipient, its metadata or the order changes."""
    canonical = json.dumps(recipients, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:6]


def scan_not_before(run_after: datetime | None) -> datetime | None:
    """The creation time below which no try of this task instance can have created a batch (None: no bound)."""
    return None if run_after is None else utc(run_after) - CLOCK_SKEW_MARGIN


def parts_report(created: Mapping[int, str], parts: int) -> str:
    """Which parts of a split campaign exist (with their ids) and which do not, for an error message."""
    done = ", ".join(f"part {p} ({created[p]})" for p in sorted(created)) or "none"
    missing = ", ".join(f"part {p}" for p in range(1, parts + 1) if p not in created) or "none"
    return f"Of this campaign's {parts} call batches, created: {done}; not created: {missing}"


@dataclass(frozen=True)
class Campaign:
    """One task instance's recipient list as batches: its tag, its number of parts, where a scan stops."""

    key: str
    not_before: datetime | None
    fingerprint: str = ""
    parts: int = 0

    def part_name(self, name: str, part: int) -> str:
        """``<name> [af:…]``, or ``<name> (part/parts) [af:…]`` for a list split in several batches."""
        numbering = f" ({part}/{self.parts})" if self.parts > 1 else ""
        return f"{name}{numbering} [af:{self.key}.{self.fingerprint}]"


@dataclass(frozen=True)
class TaggedBatch:
    """A listed batch whose name carries our tag."""

    batch: CallBatch
    key: str
    fingerprint: str
    part: int
    parts: int

    def of(self, campaign: Campaign) -> bool:
        """Whether this batch is a part of the campaign's very list (same parts, same fingerprint)."""
        return (self.key, self.parts, self.fingerprint) == (campaign.key, campaign.parts, campaign.fingerprint)


def parse_tag(batch: CallBatch) -> TaggedBatch | None:
    """The tag in a batch's name, or None when it has none (or a malformed part number)."""
    match = _TAG.search(batch.name or "")
    if match is None:
        return None
    part, parts = int(match["part"] or 1), int(match["parts"] or 1)
    return TaggedBatch(batch, match["key"], match["fp"], part, parts) if 1 <= part <= parts else None


class ScanResult(NamedTuple):
    """The batches tagged with the campaign's key that a scan found, and how many batches it read."""

    found: list[TaggedBatch]
    batches_seen: int


def scan_for_tagged(batches: Iterable[CallBatch], campaign: Campaign, wanted: Collection[int] = ()) -> ScanResult:
    """Walk ``batches`` (newest first, fetched lazily) collecting those tagged with the campaign's key.

    Stops at the cutoff, or once each part in ``wanted`` of this very list has been seen.
    """
    found: list[TaggedBatch] = []
    missing = set(wanted)
    seen = 0
    for seen, batch in enumerate(batches, start=1):
        if campaign.not_before and batch.created_at and batch.created_at < campaign.not_before:
            return ScanResult(found, seen - 1)
        tagged = parse_tag(batch)
        if tagged is not None and tagged.key == campaign.key:
            found.append(tagged)
            if tagged.of(campaign):
                missing.discard(tagged.part)
                if wanted and not missing:
                    break
    return ScanResult(found, seen)


@dataclass
class PartsPlan:
    """The existing batch to adopt for each part (the others are created); ``notes`` are worth a warning."""

    adopt: dict[int, CallBatch]
    parts: int
    notes: list[str] = field(default_factory=list)

    @property
    def create(self) -> list[int]:
        return [p for p in range(1, self.parts + 1) if p not in self.adopt]


def plan_parts(found: Sequence[TaggedBatch], campaign: Campaign) -> PartsPlan:
    """Adopt the parts of this very list earlier tries created (the oldest, when two tries raced).

    Another earlier list is adopted whole when it is complete and the only one (nothing is sent); otherwise
    :class:`DuplicateRiskError`: the missing parts of either list could call someone a second time.
    """
    lists = {(t.parts, t.fingerprint) for t in found}
    parts, fingerprint = lists.pop() if len(lists) == 1 else (campaign.parts, campaign.fingerprint)
    plan = PartsPlan(adopt={}, parts=parts)
    for tagged in sorted(found, key=lambda t: t.batch.created_at or _NEVER):
        if tagged.part in plan.adopt:
            oldest = plan.adopt[tagged.part].id
            plan.notes.append(
                f"part {tagged.part} exists more than once; adopting the oldest, {oldest} (also: {tagged.batch.id})"
            )
        else:
            plan.adopt[tagged.part] = tagged.batch
    if lists or (parts, fingerprint) != (campaign.parts, campaign.fingerprint):  # ``lists``: a second list left
        ids = ", ".join(f"{t.batch.id} (part {t.part} of {t.parts}, list {t.fingerprint})" for t in found)
        earlier = f"earlier tries of this task created batches for another recipient list than this try's: {ids}"
        if lists or plan.create:
            raise DuplicateRiskError(f"{earlier}; creating the missing parts could call someone twice")
        plan.notes.append(f"{earlier}; adopting them and sending nothing")
    return plan
