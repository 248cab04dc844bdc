"""DynamoDB AttributeValue conversion for the run records, without importing boto3.

The same conversions, checks and errors as boto3's ``boto3.dynamodb.types`` TypeSerializer and TypeDeserializer
(tests/unit/test_dynamodb_types.py compares the two on generated values): importing that module imports boto3's
package ``__init__`` and with it s3transfer and boto3's resource layer, which the functions never use, while their
clients come from botocore (shared.clients). AttributeValue: "AttributeValue" in the Amazon DynamoDB API Reference.

    Python                          DynamoDB
    None                            {"NULL": True}
    bool                            {"BOOL": value}
    int, Decimal                    {"N": str}        (38 digits, exponent -128..126, nothing rounded; no float)
    str                             {"S": str}
    bytes, bytearray, Binary        {"B": bytes}      (read back as Binary)
    set of numbers/str/binary       {"NS"|"SS"|"BS": [...]}  (an empty set is NS)
    Mapping                         {"M": {...}}
    list, tuple                     {"L": [...]}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any

DYNAMODB_CONTEXT = Context(Emin=-128, Emax=126, prec=38, traps=[Clamped, Overflow, Inexact, Rounded, Underflow])
BINARY_TYPES = (bytearray, bytes)


class Binary:
    """Binary data of an item (``B``), as boto3's ``Binary``: compares and hashes like its bytes."""

    def __init__(self, value: bytes | bytearray) -> None:
        if not isinstance(value, BINARY_TYPES):
            raise TypeError(f"Value must be of the following types: {', '.join(str(t) for t in BINARY_TYPES)}")
        self.value = value

    def __eq__(self, other: object) -> bool:
        return self.value == (other.value if isinstance(other, Binary) else other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Binary({self.value!r})"

    def __bytes__(self) -> bytes:
        return bytes(self.value)


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        raise TypeError("Float types are not supported. Use Decimal types instead.")
    return isinstance(value, int | Decimal)


def _is_string(value: Any) -> bool:
    return isinstance(value, str)


def _is_binary(value: Any) -> bool:
    return isinstance(value, Binary | bytearray | bytes)


def _is_set_of(value: Any, kind: Callable[[Any], bool]) -> bool:
    return isinstance(value, Set) and all(map(kind, value))


def _number(value: Any) -> str:
    number = str(DYNAMODB_CONTEXT.create_decimal(value))
    if number in ("Infinity", "NaN"):
        raise TypeError("Infinity and NaN not supported")
    return number


def _binary(value: Any) -> Any:
    return value.value if isinstance(value, Binary) else value


class TypeSerializer:
    """Python values to DynamoDB AttributeValues (raises TypeError for floats and unsupported types, and
    decimal's Inexact/Rounded/Overflow/Underflow/Clamped for numbers DynamoDB cannot hold exactly)."""

    def serialize(self, value: Any) -> dict[str, Any]:
        """``value`` as an AttributeValue (the table above)."""
        if value is None:
            return {"NULL": True}
        if isinstance(value, bool):
            return {"BOOL": value}
        if _is_number(value):
            return {"N": _number(value)}
        if _is_string(value):
            return {"S": value}
        if _is_binary(value):
            return {"B": _binary(value)}
        return self._collection(value)

    def _collection(self, value: Any) -> dict[str, Any]:
        if _is_set_of(value, _is_number):
            return {"NS": [_number(n) for n in value]}
        if _is_set_of(value, _is_string):
            return {"SS": list(value)}
        if _is_set_of(value, _is_binary):
            return {"BS": [_binary(b) for b in value]}
        if isinstance(value, Mapping):
            return {"M": {k: self.serialize(v) for k, v in value.items()}}
        if isinstance(value, list | tuple):
            return {"L": [self.serialize(v) for v in value]}
        raise TypeError(f'Unsupported type "{type(value)}" for value "{value}"')


class TypeDeserializer:
    """DynamoDB AttributeValues to Python values (numbers as Decimal, binary as :class:`Binary`)."""

    def deserialize(self, value: dict[str, Any]) -> Any:
        """The Python value of an AttributeValue; TypeError for an empty or unknown one."""
        if not value:
            raise TypeError("Value must be a nonempty dictionary whose key is a valid dynamodb type.")
        kind = next(iter(value))
        read = self._readers().get(kind.lower())
        if read is None:
            raise TypeError(f"Dynamodb type {kind} is not supported")
        return read(value[kind])

    def _readers(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "null": lambda _: None,
            "bool": lambda v: v,
            "n": DYNAMODB_CONTEXT.create_decimal,
            "s": lambda v: v,
            "b": Binary,
            "ns": lambda v: set(map(DYNAMODB_CONTEXT.create_decimal, v)),
            "ss": set,
            "bs": lambda v: set(map(Binary, v)),
            "l": lambda v: [self.deserialize(x) for x in v],
            "m": lambda v: {k: self.deserialize(x) for k, x in v.items()},
        }
