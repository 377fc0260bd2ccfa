"""Creating a call batch at most once per Airflow task instance, although Cartesia has no idempotency key.

Every batch is named with a tag: ``Spring renewals [af:3f9a0c1b2d4e.7c1a2b]``, or ``Spring renewals (2/3)
[af:…]`` for part 2 of 3. The key hashes dag_id, task_id, run_id and map_index (every try of one task
instance shares it); the fingerprint hashes the recipient list. The operator lists the agent's batches
newest first (:func:`scan_for_tagged`, back to the DAG run's ``run_after`` minus :data:`CLOCK_SKEW_MARGIN`)
and adopts what an earlier try created (:func:`plan_parts`). Why the scan misses nothing: docs/campaigns.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_provider_cartesia.models import CallBatch, utc

TAG_PREFIX = "af"
KEY_HEX = 12
FINGERPRINT_HEX = 6
CLOCK_SKEW_MARGIN = timedelta(hours=1)  # the clocks of Airflow's database and Cartesia may disagree
_TAG = re.compile(
    rf"(?: \((?P<part>\d+)/(?P<parts>\d+)\))? \[{TAG_PREFIX}:(?P<key>[0-9a-f]{{{KEY_HEX}}})"
    rf"\.(?P<fp>[0-9a-f]{{{FINGERPRINT_HEX}}})\]$"
)


class DuplicateRiskError(Exception):
    """What an earlier try created cannot be completed without risking a second call to someone."""


def task_instance_key(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """The same 12 hex digits for every try of one task instance; different for another run or map index."""
    identity = json.dumps([dag_id, task_id, run_id, -1 if map_index is None else int(map_index)])
    return hashlib.sha256(identity.encode()).hexdigest()[:KEY_HEX]


def recipients_fingerprint(recipients: Sequence[Mapping[str, Any]]) -> str:
    """6 hex digits that change when a recipient, its metadata or the order changes."""
    canonical = json.dumps(recipients, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:FINGERPRINT_HEX]


def scan_not_before(run_after: datetime | None) -> datetime | None:
    """The creation time below which no try of this task instance can have created a batch (None: no bound)."""
    return None if run_after is None else utc(run_after) - CLOCK_SKEW_MARGIN


def part_name(name: str, key: str, fingerprint: str, part: int, parts: int) -> str:
    """``<name> [af:…]``, or ``<name> (part/parts) [af:…]`` for a list split in several batches."""
    numbering = f" ({part}/{parts})" if parts > 1 else ""
    return f"{name}{numbering} [{TAG_PREFIX}:{key}.{fingerprint}]"


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
        return part_name(name, self.key, self.fingerprint, part, self.parts)


@dataclass(frozen=True)
class TaggedBatch:
    """A listed batch whose name carries our tag."""

    batch: CallBatch
    key: str
    fingerprint: str
    part: int
    parts: int


def parse_tag(batch: CallBatch) -> TaggedBatch | None:
    """The tag in a batch's name, or None when it has none (or a malformed part number)."""
    match = _TAG.search(batch.name or "")
    if match is None:
        return None
    part, parts = int(match["part"] or 1), int(match["parts"] or 1)
    if not 1 <= part <= parts:
        return None
    return TaggedBatch(batch, match["key"], match["fp"], part, parts)


@dataclass
class ScanResult:
    """Every batch tagged with the campaign's key that a scan saw, and how many batches it read."""

    found: list[TaggedBatch] = field(default_factory=list)
    batches_seen: int = 0


def scan_for_tagged(batches: Iterable[CallBatch], campaign: Campaign, wanted: Collection[int] = ()) -> ScanResult:
    """Walk ``batches`` (newest first, fetched lazily) collecting those tagged with the campaign's key.

    Stops at the cutoff, or once each part in ``wanted`` of this very list (same parts and fingerprint)
    has been seen.
    """
    result = ScanResult()
    missing = set(wanted)
    for batch in batches:
        if campaign.not_before and batch.created_at and utc(batch.created_at) < campaign.not_before:
            break
        result.batches_seen += 1
        tagged = parse_tag(batch)
        if tagged is None or tagged.key != campaign.key:
            continue
        result.found.append(tagged)
        if (tagged.parts, tagged.fingerprint) == (campaign.parts, campaign.fingerprint):
            missing.discard(tagged.part)
            if wanted and not missing:
                break
    return result


@dataclass
class PartsPlan:
    """What to do for each part: adopt an existing batch, or create it; ``notes`` are worth a warning."""

    adopt: dict[int, CallBatch]
    create: list[int]
    parts: int
    notes: list[str] = field(default_factory=list)


def plan_parts(found: Sequence[TaggedBatch], campaign: Campaign) -> PartsPlan:
    """Decide, from the tagged batches earlier tries left, which parts to adopt and which to create.

    Parts of this very list are adopted (the oldest, when two tries raced) and the rest created. A
    *different* earlier list is adopted whole when complete (nothing is sent); otherwise, or with two
    earlier lists, :class:`DuplicateRiskError`: the missing parts could call someone a second time.
    """
    parts, fingerprint = campaign.parts, campaign.fingerprint
    groups: dict[tuple[int, str], dict[int, list[TaggedBatch]]] = {}
    for tagged in found:
        groups.setdefault((tagged.parts, tagged.fingerprint), {}).setdefault(tagged.part, []).append(tagged)
    if len(groups) > 1:
        listing = []
        for (n, fp), by_part in groups.items():
            ids = ", ".join(t.batch.id for part in sorted(by_part) for t in by_part[part])
            listing.append(f"{len(by_part)} of {n} part(s) of list {fp} ({ids})")
        lists = "; ".join(listing)
        raise DuplicateRiskError(f"earlier tries of this task created batches for different recipient lists: {lists}")
    ((found_parts, found_fp), by_part) = next(iter(groups.items()), ((parts, fingerprint), {}))
    far_future = datetime.max.replace(tzinfo=timezone.utc)
    notes: list[str] = []
    adopt: dict[int, CallBatch] = {}
    for part, candidates in sorted(by_part.items()):
        chosen = min(candidates, key=lambda t: utc(t.batch.created_at) if t.batch.created_at else far_future)
        adopt[part] = chosen.batch
        if len(candidates) > 1:
            others = ", ".join(t.batch.id for t in candidates if t is not chosen)
            notes.append(f"part {part} exists more than once; adopting the oldest, {chosen.batch.id} (also: {others})")
    if (found_parts, found_fp) == (parts, fingerprint):
        create = [p for p in range(1, parts + 1) if p not in adopt]
        return PartsPlan(adopt=adopt, create=create, parts=parts, notes=notes)
    ids = ", ".join(b.id for _, b in sorted(adopt.items()))
    if len(adopt) < found_parts:
        raise DuplicateRiskError(
            f"an earlier try of this task created {len(adopt)} of {found_parts} part(s) ({ids}) for a different "
            f"recipient list than this try has ({parts} part(s)); creating the missing parts could call someone twice"
        )
    notes.append(
        f"an earlier try of this task created {found_parts} batch(es) ({ids}) for a different recipient list "
        f"than this try has ({parts} part(s), list {fingerprint} vs {found_fp}); adopting them and sending nothing"
    )
    return PartsPlan(adopt=adopt, create=[], parts=found_parts, notes=notes)
