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
    MAX_METADATA_DEPTH,
    InvalidRecipientsError,
    mask_number,
    recipients_from_rows,
    split_recipients,
    validate_recipients,
)

NUMBER = "+14155550100"
ARABIC_INDIC_ZERO, FULLWIDTH_ZERO, DEVANAGARI_ZERO = 0x0660, 0xFF10, 0x0966


def _digits(ascii_digits: str, zero: int) -> str:
    """``ascii_digits`` written with another script's digits (what ``\\d`` and ``str.isdigit`` accept)."""
    return ascii_digits.translate({ord("0") + i: chr(zero + i) for i in range(10)})


ARABIC_INDIC = "+" + _digits(NUMBER[1:], ARABIC_INDIC_ZERO)
FULLWIDTH = "+" + _digits(NUMBER[1:], FULLWIDTH_ZERO)


def _r(number: str = NUMBER, **metadata: Any) -> dict[str, Any]:
    return {"to_number": number, "metadata": metadata} if metadata else {"to_number": number}


def _nested(levels: int) -> Any:
    """``levels`` lists inside each other, built without recursion (deep enough to break any encoder)."""
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def _circular() -> dict[str, Any]:
    looped: dict[str, Any] = {"customer": "c1"}
    looped["self"] = looped
    return looped


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
        ({"to_number": ARABIC_INDIC}, f"recipient #2: to_number is not E.164 ({ARABIC_INDIC[:4]}…)"),
        ({"to_number": FULLWIDTH}, f"recipient #2: to_number is not E.164 ({FULLWIDTH[:4]}…)"),
        ({"to_number": NUMBER[:8] + _digits("0100", DEVANAGARI_ZERO)}, "recipient #2: to_number is not E.164"),
        ({"to_number": NUMBER + "\x00"}, "recipient #2: to_number is not E.164"),
        (
            {"to_number": "+14155550101", "metadata": {"note": "a\x00b"}},
            "recipient #2: a metadata text value holds a NUL character (\\u0000); remove it",
        ),
        (
            {"to_number": "+14155550101", "metadata": {"deep": [{"k\x00": 1}]}},
            "recipient #2: a metadata key holds a NUL character (\\u0000); remove it",
        ),
        (
            {"to_number": "+14155550101", "metadata": {"x": _nested(MAX_METADATA_DEPTH)}},
            f"recipient #2: metadata is nested more than {MAX_METADATA_DEPTH} levels deep (or contains itself)",
        ),
        (
            {"to_number": "+14155550101", "metadata": {"x": _nested(100_000)}},
            f"recipient #2: metadata is nested more than {MAX_METADATA_DEPTH} levels deep",
        ),
        (
            {"to_number": "+14155550101", "metadata": _circular()},
            "recipient #2: metadata is nested more than",
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


def test_metadata_nested_to_the_limit_and_of_any_size_is_sent() -> None:
    """No size limit: Cartesia documents none (its own 400 decides); the depth bound is inclusive."""
    deepest = {"x": _nested(MAX_METADATA_DEPTH - 1)}  # the object, then 99 lists: 100 levels
    big = {"notes": "é" * 100_000}
    items = [_r(), {"to_number": "+14155550101", "metadata": deepest}, {"to_number": "+14155550102", "metadata": big}]
    assert validate_recipients(items) == items


def test_a_non_ascii_spelling_of_a_number_is_not_a_second_recipient() -> None:
    """E.164 is ASCII digits: the Arabic-Indic and fullwidth spellings of one number are refused, not deduplicated
    as three people."""
    with pytest.raises(InvalidRecipientsError) as info:
        validate_recipients([_r(), _r(ARABIC_INDIC), _r(FULLWIDTH)])
    rule = "+ and a country code, 2 to 15 ASCII digits (0-9), no spaces"
    assert info.value.problems == [
        f"recipient #2: to_number is not E.164 ({ARABIC_INDIC[:4]}…): {rule}",
        f"recipient #3: to_number is not E.164 ({FULLWIDTH[:4]}…): {rule}",
    ]


def test_deeply_nested_metadata_text_from_sql_is_refused_clearly() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(
        InvalidRecipientsError,
        match=r"recipient #1 \(row 1 of the query\): the metadata column is "
        "nested too deeply to read as JSON",
    ):
        recipients_from_rows(["to_number", "metadata"], [(NUMBER, '{"x": ' + deep + "}")])


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
    assert recipients_from_rows(["to_number"], [(NUMBER,)]) == [{"to_number": NUMBER, "metadata": None}]
    assert validate_recipients(recipients_from_rows(["to_number", "metadata"], [(NUMBER, None)])) == [
        {"to_number": NUMBER}
    ]


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
