"""The task-instance tag in batch names, the scan for it and the adopt-or-create plan: pure, as tables."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_cartesia.idempotency import (
    CLOCK_SKEW_MARGIN,
    Campaign,
    DuplicateRiskError,
    parse_tag,
    parts_report,
    plan_parts,
    recipients_fingerprint,
    scan_for_tagged,
    scan_not_before,
    task_instance_key,
)
from airflow_provider_cartesia.models import CallBatch

T0 = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
KEY = task_instance_key("campaigns", "create", "scheduled__2026-06-01T00:00:00+00:00", -1)
FP = recipients_fingerprint([{"to_number": "+14155550100"}])


def part_name(name: str, key: str, fingerprint: str, part: int, parts: int) -> str:
    return Campaign(key, None, fingerprint, parts).part_name(name, part)


def _batch(name: str, minutes_ago: float = 0, batch_id: str | None = None) -> CallBatch:
    return CallBatch(
        id=batch_id or f"acb_{abs(hash((name, minutes_ago))):x}",
        name=name,
        created_at=T0 - timedelta(minutes=minutes_ago),
    )


def test_key_is_stable_per_task_instance_and_differs_otherwise() -> None:
    assert task_instance_key("campaigns", "create", "scheduled__2026-06-01T00:00:00+00:00", None) == KEY
    assert len(KEY) == 12 and int(KEY, 16) >= 0
    others = {
        task_instance_key("campaigns", "create", "scheduled__2026-06-02T00:00:00+00:00", -1),
        task_instance_key("campaigns", "create2", "scheduled__2026-06-01T00:00:00+00:00", -1),
        task_instance_key("campaigns2", "create", "scheduled__2026-06-01T00:00:00+00:00", -1),
        task_instance_key("campaigns", "create", "scheduled__2026-06-01T00:00:00+00:00", 0),
        task_instance_key("campaigns", "create", "scheduled__2026-06-01T00:00:00+00:00", 1),
    }
    assert KEY not in others and len(others) == 5


def test_fingerprint_follows_numbers_metadata_and_order() -> None:
    a, b = {"to_number": "+1"}, {"to_number": "+2", "metadata": {"x": 1}}
    assert recipients_fingerprint([a, b]) == recipients_fingerprint(
        [dict(a), {"metadata": {"x": 1}, "to_number": "+2"}]
    )
    assert recipients_fingerprint([a, b]) != recipients_fingerprint([b, a])
    assert recipients_fingerprint([a, b]) != recipients_fingerprint([a, {"to_number": "+2", "metadata": {"x": 2}}])


@pytest.mark.parametrize(
    ("part", "parts", "name"),
    [(1, 1, f"Spring [af:{KEY}.{FP}]"), (2, 3, f"Spring (2/3) [af:{KEY}.{FP}]")],
)
def test_names_round_trip(part: int, parts: int, name: str) -> None:
    assert part_name("Spring", KEY, FP, part, parts) == name
    tagged = parse_tag(_batch(name))
    assert tagged is not None and (tagged.key, tagged.fingerprint, tagged.part, tagged.parts) == (KEY, FP, part, parts)


@pytest.mark.parametrize(
    "name",
    [
        "Spring",
        f"Spring [af:{KEY}]",
        f"Spring [af:{KEY}.{FP}] copy",
        f"Spring (4/3) [af:{KEY}.{FP}]",
        f"[af:{KEY[:-1]}.{FP}]",
        "",
    ],
)
def test_names_without_a_valid_tag_are_ignored(name: str) -> None:
    assert parse_tag(_batch(name)) is None


def test_a_user_name_that_looks_like_a_part_still_parses() -> None:
    tagged = parse_tag(_batch(f"Wave (1/2) (2/2) [af:{KEY}.{FP}]"))
    assert tagged is not None and (tagged.part, tagged.parts) == (2, 2)


class _Lazy:
    """Batches handed out one by one, counting how many were pulled (the hook's list is lazy)."""

    def __init__(self, batches: list[CallBatch]) -> None:
        self.batches = batches
        self.pulled = 0

    def __iter__(self) -> Iterator[CallBatch]:
        for batch in self.batches:
            self.pulled += 1
            yield batch


def test_scan_stops_at_the_first_batch_older_than_the_cutoff() -> None:
    mine = part_name("S", KEY, FP, 1, 1)
    batches = _Lazy([_batch("other", 1), _batch(mine, 30), _batch("other", 59), _batch("old", 61), _batch(mine, 62)])
    result = scan_for_tagged(batches, Campaign(KEY, T0 - timedelta(hours=1)))
    assert [t.batch.name for t in result.found] == [mine]
    assert (result.batches_seen, batches.pulled) == (3, 4), "the fourth batch, too old, ends the scan"


def test_scan_without_cutoff_reads_everything_and_ignores_missing_created_at() -> None:
    mine = part_name("S", KEY, FP, 1, 1)
    undated = CallBatch(id="acb_x", name=mine, created_at=None)
    result = scan_for_tagged(_Lazy([_batch("a", 500), undated]), Campaign(KEY, None))
    assert [t.batch.id for t in result.found] == ["acb_x"]
    batches = _Lazy([undated, _batch("a", 500), _batch("never pulled", 501)])
    result = scan_for_tagged(batches, Campaign(KEY, T0))
    assert (result.batches_seen, batches.pulled) == (1, 2)


def test_scan_stops_once_every_wanted_part_is_found() -> None:
    other_key = task_instance_key("campaigns", "create", "other_run", -1)
    batches = _Lazy(
        [
            _batch(part_name("S", KEY, FP, 2, 2), 1),
            _batch(part_name("S", other_key, FP, 1, 2), 2),
            _batch(part_name("S", KEY, FP, 1, 2), 3),
            _batch("never pulled", 4),
        ]
    )
    result = scan_for_tagged(batches, Campaign(KEY, None, FP, 2), {1, 2})
    assert [(t.part, t.parts) for t in result.found] == [(2, 2), (1, 2)]
    assert batches.pulled == 3


def test_cutoff_is_run_after_minus_the_margin() -> None:
    assert scan_not_before(T0) == T0 - CLOCK_SKEW_MARGIN
    assert scan_not_before(T0.replace(tzinfo=None)) == T0 - CLOCK_SKEW_MARGIN
    assert scan_not_before(None) is None


def _found(*specs: tuple[int, int, str, float]) -> list:
    out = []
    for part, parts, fp, minutes_ago in specs:
        tagged = parse_tag(
            _batch(part_name("S", KEY, fp, part, parts), minutes_ago, f"acb_{part}_{parts}_{fp}_{minutes_ago:g}")
        )
        assert tagged is not None
        out.append(tagged)
    return out


def test_plan_creates_everything_when_nothing_was_found() -> None:
    plan = plan_parts([], Campaign(KEY, None, FP, 3))
    assert (plan.adopt, plan.create, plan.parts, plan.notes) == ({}, [1, 2, 3], 3, [])


def test_plan_adopts_found_parts_and_creates_only_the_missing_ones() -> None:
    plan = plan_parts(_found((1, 3, FP, 5), (3, 3, FP, 4)), Campaign(KEY, None, FP, 3))
    assert {p: b.id for p, b in plan.adopt.items()} == {1: f"acb_1_3_{FP}_5", 3: f"acb_3_3_{FP}_4"}
    assert plan.create == [2] and plan.notes == []


def test_plan_adopts_the_oldest_of_duplicates_and_says_so() -> None:
    plan = plan_parts(_found((1, 1, FP, 1), (1, 1, FP, 9)), Campaign(KEY, None, FP, 1))
    assert plan.adopt[1].id == f"acb_1_1_{FP}_9" and plan.create == []
    assert plan.notes == [f"part 1 exists more than once; adopting the oldest, acb_1_1_{FP}_9 (also: acb_1_1_{FP}_1)"]


def test_plan_adopts_a_complete_earlier_list_and_sends_nothing() -> None:
    plan = plan_parts(_found((1, 2, "aaaaaa", 5), (2, 2, "aaaaaa", 5)), Campaign(KEY, None, FP, 3))
    assert sorted(plan.adopt) == [1, 2] and plan.create == [] and plan.parts == 2
    assert plan.notes == [
        "earlier tries of this task created batches for another recipient list than this try's: "
        "acb_1_2_aaaaaa_5 (part 1 of 2, list aaaaaa), acb_2_2_aaaaaa_5 (part 2 of 2, list aaaaaa); "
        "adopting them and sending nothing"
    ]


def test_plan_refuses_to_complete_an_earlier_list_that_differs() -> None:
    with pytest.raises(
        DuplicateRiskError,
        match=r"another recipient list than this try's: acb_1_2_aaaaaa_5 \(part 1 of 2, list aaaaaa\); creating",
    ):
        plan_parts(_found((1, 2, "aaaaaa", 5)), Campaign(KEY, None, FP, 2))


def test_plan_refuses_two_different_earlier_lists() -> None:
    with pytest.raises(
        DuplicateRiskError, match=f"another recipient list than this try's: acb_1_1_aaaaaa_5 .*, acb_1_1_{FP}_2 "
    ):
        plan_parts(_found((1, 1, "aaaaaa", 5), (1, 1, FP, 2)), Campaign(KEY, None, FP, 1))


@pytest.mark.parametrize(
    ("created", "parts", "expected"),
    [
        ({1: "acb_1"}, 3, "created: part 1 (acb_1); not created: part 2, part 3"),
        ({}, 2, "created: none; not created: part 1, part 2"),
        ({2: "acb_2", 1: "acb_1"}, 2, "created: part 1 (acb_1), part 2 (acb_2); not created: none"),
    ],
)
def test_parts_report_names_every_part(created: dict[int, str], parts: int, expected: str) -> None:
    assert parts_report(created, parts) == f"Of this campaign's {parts} call batches, {expected}"
