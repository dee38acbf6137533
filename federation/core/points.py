"""The point: one InfluxDB line-protocol record, the unit every part of federation exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field

FieldValue = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Point:
    """One point: measurement, tags, typed fields and a timestamp in nanoseconds since the epoch.

    `int` fields are integers (`i` in line protocol), `float` fields floats, `str` strings and
    `bool` booleans; the type is part of the contract with the gateway's typed output schema.
    """

    measurement: str
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, FieldValue] = field(default_factory=dict)
    time_ns: int = 0

    def series_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Measurement plus sorted tags: what InfluxDB keys a series by."""
        return self.measurement, tuple(sorted(self.tags.items()))
