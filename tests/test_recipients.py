"""Recipient validation, SQL rows to recipients, and splitting: pure functions, as tables."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from airflow_provider_cartesia.models import MAX_RECIPIENTS_PER_BATCH
from airflow_provider_cartesia.recipients import (
    MAX_METADATA_BYTES,
    InvalidRecipientsError,
    mask_number,
    recipients_from_rows,
    split_recipients,
    validate_recipients,
)

NUMBER = "+14155550100"


def _r(number: str = NUMBER, **metadata: Any) -> dict[str, Any]:
    return {"to_number": number, "metadata": metadata} if metadata else {"to_number": number}


def test_the_batch_limit_is_the_apis() -> None:
    assert MAX_RECIPIENTS_PER_BATCH == 5000


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("+14155550100", "+141…"),
        ("+1415", "+1…"),
        ("12", "1…"),
        ("", "…"),
        (14155550100, "a int"),
        (None, "a NoneType"),
    ],
)
def test_mask_number_keeps_at_most_four_characters(value: object, shown: str) -> None:
    assert mask_number(value) == shown


def test_valid_recipients_come_back_as_the_api_takes_them() -> None:
    items = [_r(customer="Zoë", tier=2), {"to_number": "+442071838750", "metadata": None}, _r("+81312345678")]
    assert validate_recipients(items) == [
        {"to_number": NUMBER, "metadata": {"customer": "Zoë", "tier": 2}},
        {"to_number": "+442071838750"},
        {"to_number": "+81312345678"},
    ]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"to_number": "4155550100"}, "recipient #2: to_number is not E.164 (4155…)"),
        ({"to_number": "+0415555010"}, "recipient #2: to_number is not E.164 (+041…)"),
        ({"to_number": "+1415555010012345"}, "recipient #2: to_number is not E.164 (+141…)"),
        ({"to_number": "+1 415 555 0100"}, "recipient #2: to_number is not E.164 (+1 4…)"),
        ({"to_number": "+14155550199\n"}, "recipient #2: to_number is not E.164 (+141…)"),
        ({"to_number": 14155550100}, "recipient #2: to_number must be text, got a int"),
        ({"metadata": {}}, "recipient #2: to_number is missing"),
        ({"to_number": NUMBER, "name": "Bo"}, "recipient #2: unknown field(s) name; put extra fields in metadata"),
        ("+14155550101", "recipient #2: must be an object with to_number and metadata, got a str"),
        ({"to_number": "+14155550101", "metadata": ["a"]}, "metadata must be a JSON object or null, got a list"),
        ({"to_number": "+14155550101", "metadata": {"at": datetime(2026, 1, 1)}}, "metadata is not JSON (a datetime)"),
        ({"to_number": "+14155550101", "metadata": {"x": float("nan")}}, "metadata is not JSON"),
        ({"to_number": "+14155550101", "metadata": {1: "a"}}, "metadata keys must be strings"),
        (
            {"to_number": "+14155550101", "metadata": {"x": "é" * MAX_METADATA_BYTES}},
            f"metadata is 8,200 bytes as JSON; at most {MAX_METADATA_BYTES:,} are allowed",
        ),
        (_r(NUMBER), "recipient #2: to_number repeats recipient #1 (+141…); set allow_duplicate_numbers=True"),
    ],
)
def test_an_invalid_recipient_is_named_by_position_never_by_number(item: Any, expected: str) -> None:
    with pytest.raises(InvalidRecipientsError) as info:
        validate_recipients([_r(), item, _r("+14155550199")])
    message = str(info.value)
    assert expected in message
    assert message.startswith("Invalid recipients (of 3 recipients): recipient #2")
    for number in ("14155550100", "4155550100", "14155550101", "415555010012345"):
        assert number not in message


def test_duplicates_are_allowed_when_asked() -> None:
    assert len(validate_recipients([_r(), _r()], allow_duplicate_numbers=True)) == 2


def test_every_problem_is_counted_and_the_first_few_shown() -> None:
    items = [{"to_number": f"555{i:04d}"} for i in range(8)]
    with pytest.raises(InvalidRecipientsError) as info:
        validate_recipients(items)
    assert len(info.value.problems) == 8
    assert "recipient #5:" in str(info.value) and "recipient #6:" not in str(info.value)
    assert str(info.value).endswith("; and 3 more problem(s)")


def test_no_recipients_is_an_error() -> None:
    with pytest.raises(InvalidRecipientsError, match="there are none"):
        validate_recipients([])


@pytest.mark.parametrize(
    ("count", "sizes"),
    [(1, [1]), (5000, [5000]), (5001, [2501, 2500]), (10_000, [5000, 5000]), (12_000, [4000] * 3), (0, [])],
)
def test_split_in_balanced_parts_keeping_order(count: int, sizes: list[int]) -> None:
    items = list(range(count))
    parts = split_recipients(items)
    assert [len(p) for p in parts] == sizes
    assert [x for p in parts for x in p] == items


def test_rows_become_recipients_with_other_columns_as_metadata() -> None:
    columns = ["TO_NUMBER", "customer_id", "balance", "due", "ref", "opened_at"]
    rows = [
        (NUMBER, 7, Decimal("12.50"), date(2026, 6, 1), UUID(int=1), datetime(2026, 1, 2, 3, tzinfo=timezone.utc)),
        ("+14155550101", 8, Decimal("3"), None, None, None),
    ]
    assert recipients_from_rows(columns, rows) == [
        {
            "to_number": NUMBER,
            "metadata": {
                "customer_id": 7,
                "balance": 12.5,
                "due": "2026-06-01",
                "ref": "00000000-0000-0000-0000-000000000001",
                "opened_at": "2026-01-02T03:00:00+00:00",
            },
        },
        {
            "to_number": "+14155550101",
            "metadata": {"customer_id": 8, "balance": 3, "due": None, "ref": None, "opened_at": None},
        },
    ]


def test_a_metadata_column_holds_json_text_or_parsed_objects() -> None:
    rows = [(NUMBER, json.dumps({"tier": "gold"}), "en"), ("+2", {"tier": "blue"}, "fr"), ("+3", None, "de")]
    assert recipients_from_rows(["to_number", "Metadata", "lang"], rows) == [
        {"to_number": NUMBER, "metadata": {"tier": "gold", "lang": "en"}},
        {"to_number": "+2", "metadata": {"tier": "blue", "lang": "fr"}},
        {"to_number": "+3", "metadata": {"lang": "de"}},
    ]
    assert recipients_from_rows(["to_number"], [(NUMBER,)]) == [{"to_number": NUMBER}]
    assert recipients_from_rows(["to_number", "metadata"], [(NUMBER, None)]) == [{"to_number": NUMBER}]


@pytest.mark.parametrize(
    ("columns", "rows", "expected"),
    [
        (["phone"], [], "the query returns no to_number column (columns: phone)"),
        (["to_number", "TO_NUMBER"], [], "the query returns the to_number column more than once"),
        (["to_number", "metadata"], [(NUMBER, "{not json")], "recipient #1 (row 1 of the query): the metadata column"),
        (["to_number", "metadata"], [(NUMBER, "[1]")], "must hold a JSON object, got a list"),
        (["to_number", "metadata", "tier"], [(NUMBER, '{"tier": 1}', 2)], "column tier is also a key of the metadata"),
        (["to_number", "blob"], [(NUMBER, b"\x00")], "column blob: a bytes value has no JSON form"),
    ],
)
def test_bad_rows_are_named_by_position(columns: list[str], rows: list[tuple[Any, ...]], expected: str) -> None:
    with pytest.raises(InvalidRecipientsError) as info:
        recipients_from_rows(columns, rows)
    assert expected in str(info.value)
    assert "4155550100" not in str(info.value)
