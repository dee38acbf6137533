"""How the Kapacitor emulator reads requests and writes answers as Kapacitor 1.5.7 does: HTTP
errors, JSON bodies and parameters, times, task ids, and scripts as Kapacitor shows them."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def valid_id(text: str) -> bool:
    """Kapacitor's `^[-\\._\\p{L}0-9]+$`: str.isalpha is exactly the Unicode L categories."""
    return bool(text) and all(c.isalpha() or c in "-._0123456789" for c in text)


def default_validator(script: str) -> None:
    """Parse with federation.tickscript when it is there; otherwise accept any script."""
    try:
        from federation import tickscript
    except ImportError:
        return
    parse = getattr(tickscript, "parse", None)
    if parse is not None:
        parse(script, "<task>")


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> int:
    """RFC 3339 with up to nanosecond fractions, to nanoseconds since the epoch."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        raise ValueError(text)
    base, fraction, zone = match.groups()
    moment = dt.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    nanos = int((fraction or "").ljust(9, "0"))
    return int(moment.timestamp()) * 1_000_000_000 + nanos


def formatted(script: str) -> str:
    """The script as Kapacitor shows it by default: re-printed by its formatter, so it differs
    from the bytes that were sent (comments and layout are not kept)."""
    try:
        from federation.tickscript import format as format_script
        from federation.tickscript import parse

        return format_script(parse(script))
    except Exception:
        return script


CHAIN_CALL = re.compile(r"([|@])\s*([A-Za-z]\w*)\s*\(")


def first_udf_node(script: str) -> str | None:
    """The name Kapacitor gives the script's first UDF node: the UDF's name and the node's id,
    counting the chain calls in order after the source node (`batch0`, `query1`, `fedagg2`)."""
    code = "\n".join(line.split("//", 1)[0] for line in script.splitlines())
    for node_id, match in enumerate(CHAIN_CALL.finditer(code), start=1):
        if match.group(1) == "@":
            return f"{match.group(2)}{node_id}"
    return None


def json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise HttpError(400, "invalid JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "invalid JSON")
    return data


def dbrp_list(given: Any) -> list[dict[str, str]]:
    if not given:
        return []
    if not isinstance(given, list) or not all(
        isinstance(d, dict) and d.get("db") and d.get("rp") for d in given
    ):
        raise HttpError(400, "invalid dbrps: want a list of {db, rp}")
    return [{"db": str(d["db"]), "rp": str(d["rp"])} for d in given]


def int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"invalid {name} parameter {raw!r}") from None
    if value < 0:
        raise HttpError(400, f"invalid {name} parameter {raw!r}")
    return value
