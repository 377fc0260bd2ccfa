"""Creating a call batch at most once per Airflow task instance, although Cartesia has no idempotency key.

The create operator names every batch it creates with a tag of the task instance that created it::

    Spring renewals [af:3f9a0c1b2d4e.7c1a2b]          one batch
    Spring renewals (2/3) [af:3f9a0c1b2d4e.7c1a2b]    part 2 of a list split in 3

- ``3f9a0c1b2d4e`` is the *task-instance key*: a hash of dag_id, task_id, run_id and map_index.
  Every try of one task instance (a retry, a cleared task) has the same key; another run has another.
- ``7c1a2b`` is the *recipients fingerprint*: a hash of the whole recipient list, in order. It tells
  whether an earlier try sent the same recipients (so that its parts and ours line up).

Before creating anything, and again whenever a create's outcome is unknown, the operator lists the
agent's batches newest first (:func:`scan_for_tagged`) and adopts what an earlier try created
(:func:`plan_parts`) instead of creating it again.

Where the scan stops, and why it misses nothing: Airflow starts a DAG run's tasks only once its
``run_after`` has passed (the scheduler selects runs with ``run_after <= now()``; clearing a task
does not change it), so every batch any try of this task instance created is younger than
``run_after``. The scan stops at the first batch created before ``run_after`` minus
:data:`CLOCK_SKEW_MARGIN` (for the clocks of Airflow's database and Cartesia to disagree), or
earlier, as soon as every part of the current list has been found. A batch without
``created_at`` never stops it. There is no page cap: a cap could miss a batch of a busy agent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_cartesia.models import CallBatch

TAG_PREFIX = "af"
KEY_HEX = 12
FINGERPRINT_HEX = 6
CLOCK_SKEW_MARGIN = timedelta(hours=1)
"""How much older than the DAG run's ``run_after`` a batch may look and still be scanned past."""
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


def parts_report(created: Mapping[int, str], parts: int) -> str:
    """Which parts of a split campaign exist (with their ids) and which do not, for an error message."""
    done = ", ".join(f"part {p} ({created[p]})" for p in sorted(created)) or "none"
    missing = ", ".join(f"part {p}" for p in range(1, parts + 1) if p not in created) or "none"
    return f"Of this campaign's {parts} call batches, created: {done}; not created: {missing}"


@dataclass(frozen=True)
class TaggedBatch:
    """A listed batch whose name carries our tag."""

    batch: CallBatch
    key: str
    fingerprint: str
    part: int
    parts: int


def tag(key: str, fingerprint: str) -> str:
    return f"[{TAG_PREFIX}:{key}.{fingerprint}]"


def part_name(name: str, key: str, fingerprint: str, part: int, parts: int) -> str:
    """``<name> [af:…]``, or ``<name> (part/parts) [af:…]`` for a list split in several batches."""
    numbering = f" ({part}/{parts})" if parts > 1 else ""
    return f"{name}{numbering} {tag(key, fingerprint)}"


def parse_tag(batch: CallBatch) -> TaggedBatch | None:
    """The tag in a batch's name, or None when it has none (or a malformed part number)."""
    match = _TAG.search(batch.name or "")
    if match is None:
        return None
    part, parts = int(match["part"] or 1), int(match["parts"] or 1)
    if not 1 <= part <= parts:
        return None
    return TaggedBatch(batch, match["key"], match["fp"], part, parts)


def scan_not_before(run_after: datetime | None) -> datetime | None:
    """The creation time below which no try of this task instance can have created a batch (None: no bound)."""
    if run_after is None:
        return None
    if run_after.tzinfo is None:
        run_after = run_after.replace(tzinfo=timezone.utc)
    return run_after - CLOCK_SKEW_MARGIN


@dataclass
class ScanResult:
    """Every batch tagged with one task-instance key that a scan saw, and how far it looked."""

    found: list[TaggedBatch] = field(default_factory=list)
    batches_seen: int = 0
    stopped_at_cutoff: bool = False


def scan_for_tagged(
    batches: Iterable[CallBatch],
    key: str,
    *,
    not_before: datetime | None,
    until_found: tuple[int, str, Collection[int]] | None = None,
) -> ScanResult:
    """Walk ``batches`` (newest first, fetched lazily) collecting those tagged with ``key``.

    Stops at the first batch created before ``not_before`` (see the module docstring), or once each
    of the parts ``wanted`` of a list of ``parts`` parts with fingerprint ``fp`` has been seen, where
    ``until_found=(parts, fp, wanted)``.
    """
    result = ScanResult()
    wanted: set[int] = set(until_found[2]) if until_found else set()
    for batch in batches:
        created = batch.created_at
        if not_before is not None and created is not None:
            if created.tzinfo is None:
                created = created.replace(tzinfo=timezone.utc)
            if created < not_before:
                result.stopped_at_cutoff = True
                break
        result.batches_seen += 1
        tagged = parse_tag(batch)
        if tagged is None or tagged.key != key:
            continue
        result.found.append(tagged)
        if until_found and (tagged.parts, tagged.fingerprint) == until_found[:2]:
            wanted.discard(tagged.part)
            if not wanted:
                break
    return result


@dataclass
class PartsPlan:
    """What to do for each part: adopt an existing batch, or create it."""

    adopt: dict[int, CallBatch]
    create: list[int]
    parts: int
    notes: list[str] = field(default_factory=list)
    """Things worth a warning in the task log (duplicates seen, recipients changed since a try)."""


def _oldest(candidates: list[TaggedBatch]) -> TaggedBatch:
    far_future = datetime.max.replace(tzinfo=timezone.utc)
    return min(candidates, key=lambda t: t.batch.created_at or far_future)


def _ids(by_part: Mapping[int, list[TaggedBatch]]) -> str:
    return ", ".join(t.batch.id for _, tagged in sorted(by_part.items()) for t in tagged)


def plan_parts(found: Sequence[TaggedBatch], parts: int, fingerprint: str) -> PartsPlan:
    """Decide, from the tagged batches an earlier try left, which parts to adopt and which to create.

    - Nothing found: create every part.
    - Found parts of this very list (same part count and fingerprint): adopt them, create the rest.
    - An earlier try sent a *different* list (the SQL returned other rows, the upstream XCom changed):
      when it created all its parts, adopt them (the current list is not sent; a note says so);
      when it created only some, raise :class:`DuplicateRiskError`: the missing parts of either list
      could call people its created parts already call.
    - Two batches for one part (two tries raced): the oldest is adopted; a note names the others.
    """
    groups: dict[tuple[int, str], dict[int, list[TaggedBatch]]] = {}
    for tagged in found:
        groups.setdefault((tagged.parts, tagged.fingerprint), {}).setdefault(tagged.part, []).append(tagged)
    if not groups:
        return PartsPlan(adopt={}, create=list(range(1, parts + 1)), parts=parts)
    if len(groups) > 1:
        listing = "; ".join(
            f"{len(by_part)} of {n} part(s) of list {fp} ({_ids(by_part)})" for (n, fp), by_part in groups.items()
        )
        raise DuplicateRiskError(f"earlier tries of this task created batches for different recipient lists: {listing}")
    ((found_parts, found_fp), by_part) = next(iter(groups.items()))
    notes: list[str] = []
    adopt: dict[int, CallBatch] = {}
    for part, candidates in sorted(by_part.items()):
        chosen = _oldest(candidates)
        adopt[part] = chosen.batch
        if len(candidates) > 1:
            others = ", ".join(t.batch.id for t in candidates if t is not chosen)
            notes.append(f"part {part} exists more than once; adopting the oldest, {chosen.batch.id} (also: {others})")
    if (found_parts, found_fp) == (parts, fingerprint):
        return PartsPlan(
            adopt=adopt, create=[p for p in range(1, parts + 1) if p not in adopt], parts=parts, notes=notes
        )
    ids = ", ".join(b.id for _, b in sorted(adopt.items()))
    if len(adopt) == found_parts:
        notes.append(
            f"an earlier try of this task created {found_parts} batch(es) ({ids}) for a different recipient list "
            f"than this try has ({parts} part(s), list {fingerprint} vs {found_fp}); adopting them and sending nothing"
        )
        return PartsPlan(adopt=adopt, create=[], parts=found_parts, notes=notes)
    raise DuplicateRiskError(
        f"an earlier try of this task created {len(adopt)} of {found_parts} part(s) ({ids}) for a different "
        f"recipient list than this try has ({parts} part(s)); creating the missing parts could call someone twice"
    )
