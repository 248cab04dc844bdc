"""Reading the ISO 8601 times autostop writes and reads (run records, events, execution context)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_time(text: Any) -> datetime | None:
    """An aware datetime from ``YYYY-MM-DDTHH:MM:SSZ`` or any ISO 8601 string (UTC when it names no offset), or a
    datetime as given (converted to UTC); None when absent or unreadable. Never raises."""
    if isinstance(text, datetime):
        return text.astimezone(UTC)
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
