"""Quoting for InfluxQL: identifiers and string literals.

Every statement federation writes (a plan's query, retention changes, erasure, the audit's and
the reports' reads) quotes its names and values here.
"""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier: in double quotes, with backslash and `"` escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """Quote an InfluxQL string literal (`'it\\'s'`)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
