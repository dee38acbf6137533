"""The gateway's reader: `parse(body)` reads a write body, the fastest way its form allows.

Three readers hide behind it, and nothing else in the gateway calls them:

- `wire.read_columns` reads a plain body's main shape into a column of texts per key, without a
  point per line (the rules check its lines a column at a time);
- `wire.parse_lines` reads a plain body into points, line by line;
- `lineprotocol.parse`, the general reader, reads any other body and explains what does not
  parse (line:column).

The fast readers may be narrower than the general one, never broader: whatever they accept,
`lineprotocol.parse` reads to the same points (see `wire`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from federation.coordinator.gateway.refusal import Refusal
from federation.coordinator.gateway.wire import Columns, Line, parse_lines, read_columns
from federation.core.lineprotocol import parse as parse_line_protocol
from federation.errors import InvalidInput, LineProtocolError


class ParsedBody:
    """One write body, read: its columns when it is plain enough, and its points with their
    line numbers. Each is read once, when first asked for."""

    def __init__(self, body: bytes, precision: str, default_time_ns: int) -> None:
        self.body = body
        self.precision = precision
        self.default_time_ns = default_time_ns
        self.text = _utf8(body)

    @cached_property
    def columns(self) -> Columns | None:
        """The body's main shape read column by column; None when the body is not plain."""
        if self.text is None:
            return None
        return read_columns(self.text, self.precision, self.default_time_ns)

    @cached_property
    def lines(self) -> list[Line]:
        """Every point with its line number; Refusal `line-protocol` when the body does not
        parse. Plain bodies take the fast path; any other is read by the general parser,
        whose errors carry line and column."""
        if self.text is not None:
            fast = parse_lines(self.text, self.precision, self.default_time_ns)
            if fast is not None:
                return fast
        try:
            points = parse_line_protocol(self.body, self.precision, self.default_time_ns)
        except LineProtocolError as exc:
            raise Refusal(
                "line-protocol", f"line {exc.line}:{exc.column}: {exc.message}", line=exc.line
            ) from None
        except InvalidInput as exc:
            raise Refusal("line-protocol", str(exc)) from None
        numbers = _line_numbers(self.text, len(points))
        return [Line(p, n) for p, n in zip(points, numbers, strict=True)]


def parse(body: bytes, precision: str, default_time_ns: int) -> ParsedBody:
    """Read a write body (`precision` as `/write` takes it; `default_time_ns` for lines
    without a timestamp). Nothing is read until its columns or lines are asked for."""
    return ParsedBody(body, precision, default_time_ns)


def parse_body(body: bytes, precision: str, default_time_ns: int) -> list[Line]:
    """The points of a write body with their line numbers; Refusal `line-protocol`."""
    return parse(body, precision, default_time_ns).lines


def _utf8(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _line_numbers(text: str | None, count: int) -> list[int | Any]:
    """Line numbers for points the general parser read: exact when each point is one line."""
    if text is not None:
        numbers = [
            i
            for i, raw in enumerate(text.split("\n"), start=1)
            if raw.strip(" \t\r") and not raw.lstrip(" \t").startswith("#")
        ]
        if len(numbers) == count:
            return list(numbers)
    return [None] * count
