"""shared.dynamodb_types converts run records exactly as boto3.dynamodb.types does: the same AttributeValues, the same
values read back, the same exceptions, on generated values of every kind DynamoDB has (and some it refuses)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import boto3.dynamodb.types as boto3_types
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import dynamodb_types as ours

NUMBERS = st.integers() | st.decimals(allow_nan=True, allow_infinity=True) | st.floats(allow_nan=False)
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=8) | st.binary(max_size=8)
SETS = st.frozensets(st.integers() | st.decimals(allow_nan=False, places=3), max_size=4) | st.sets(st.text(max_size=4), max_size=4)
VALUES = st.recursive(
    SCALARS | SETS | st.sets(st.binary(max_size=4), max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=12,
)


def outcome(call: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", call(value)
    except Exception as exc:  # noqa: BLE001 - the exception's type is what is compared
        return "raised", type(exc).__name__


def plain(value: Any) -> Any:
    """Binary of either module as bytes, Decimals as text (NaN is unequal to itself), sets as sorted lists."""
    if isinstance(value, Decimal):
        return ("Decimal", str(value))
    if isinstance(value, ours.Binary | boto3_types.Binary):
        return bytes(value.value)
    if isinstance(value, set | frozenset):
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_serialize_and_read_back_as_boto3_does(value: Any) -> None:
    mine, theirs = outcome(ours.TypeSerializer().serialize, value), outcome(boto3_types.TypeSerializer().serialize, value)
    assert plain(mine) == plain(theirs)
    if mine[0] == "ok":
        assert plain(outcome(ours.TypeDeserializer().deserialize, mine[1])) == plain(
            outcome(boto3_types.TypeDeserializer().deserialize, theirs[1])
        )


def test_refusals_name_the_same_errors() -> None:
    cases: list[Any] = [1.5, Decimal("1e200"), Decimal("1." + "1" * 40), Decimal("NaN"), {1, "a"}, object(), {1.5}]
    for value in cases:
        assert outcome(ours.TypeSerializer().serialize, value) == outcome(boto3_types.TypeSerializer().serialize, value), value
    for value in ({}, {"X": 1}, {"B": "text"}, {"nUlL": True}, {"N": "1e300"}):
        assert outcome(ours.TypeDeserializer().deserialize, value) == outcome(boto3_types.TypeDeserializer().deserialize, value)


def test_a_record_item_round_trips() -> None:
    item = {"instance_id": "i-0123", "attempt": 3, "at": Decimal("1.25"), "history": [{"status": "claimed", "ok": True}], "x": None}
    written = ours.TypeSerializer().serialize(item)
    assert written == boto3_types.TypeSerializer().serialize(item)
    assert ours.TypeDeserializer().deserialize(written) == item
