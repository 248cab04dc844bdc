"""Printing for people (aligned tables, durations) and for scripts (JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

UNKNOWN = "unknown"


def emit_json(value: Any) -> None:
    """Print ``value`` as indented JSON (datetimes as ISO 8601) on stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; None shows as ``unknown``."""
    cells = [[str(h) for h in headers], *[[UNKNOWN if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def iso(when: datetime | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, or None."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def hours(start: datetime | None, end: datetime | None) -> float | None:
    """Hours from ``start`` to ``end`` (two decimals), or None when either is unknown or the span is negative."""
    if start is None or end is None or end < start:
        return None
    return round((end - start).total_seconds() / 3600, 2)


def show(value: Any, unit: str = "") -> str:
    """``value`` with its unit for a table, or ``unknown``."""
    return UNKNOWN if value is None else f"{value}{unit}"
