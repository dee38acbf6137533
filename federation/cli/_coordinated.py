"""What `policy` and `rollout` share when they go through the coordinator: choosing the path,
and printing a reload's diff and the agents' progress."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from federation.cli._common import OutputFormat, err, out, print_rows
from federation.config import FederationConfig


def through_coordinator(config: FederationConfig, direct: bool) -> bool:
    """Whether a command goes through the coordinator: unless `--direct`, or the fleet names
    no operator token (then the coordinator takes no operator requests, and we say so)."""
    if direct:
        return False
    if config.fleet.central.operator_token_env is None:
        err.print(
            "note: fleet.yaml names no central.operator_token_env; applying directly (--direct)",
            markup=False,
        )
        return False
    return True


def reload_rows(
    reload: dict[str, Any],
    *,
    dcs: Sequence[str] | None = None,
    aggregations: Sequence[str] | None = None,
    retention: bool = True,
    plans: bool = True,
) -> list[dict[str, Any]]:
    """A reload's diff as flat rows: dc, what (retention|plan), subject, change, detail."""
    rows: list[dict[str, Any]] = []
    for entry in reload.get("dcs", []):
        dc = str(entry["dc"])
        if dcs and dc not in dcs:
            continue
        if retention:
            for effect in entry.get("retention", []):
                detail = "DESTRUCTIVE" if entry.get("retention_destructive") else ""
                if detail and entry.get("shrink_allowed"):
                    detail += ", allowed"
                rows.append(
                    {"dc": dc, "what": "retention", "subject": "raw", "change": effect,
                     "detail": detail}
                )  # fmt: skip
        if plans:
            for plan in entry.get("plans", []):
                if aggregations and plan["aggregation"] not in aggregations:
                    continue
                fields = ", ".join(
                    f"{key}: {old!r} -> {new!r}" for key, (old, new) in plan["fields"].items()
                )
                rows.append(
                    {
                        "dc": dc,
                        "what": "plan",
                        "subject": plan["aggregation"],
                        "change": f"{plan['change']} {plan['desired_version'] or '-'} -> "
                        f"{plan['config_version'] or '-'}",
                        "detail": fields,
                    }
                )
    return rows


def print_reload(rows: Sequence[dict[str, Any]], fmt: OutputFormat, title: str) -> None:
    """Print reload rows: one line each on a table, or as CSV/JSON."""
    if fmt is not OutputFormat.table:
        print_rows(rows, ("dc", "what", "subject", "change", "detail"), fmt, title)
        return
    if not rows:
        out.print(f"{title}: nothing changes", markup=False)
    for row in rows:
        detail = f"  ({row['detail']})" if row["detail"] else ""
        out.print(f"{row['dc']}: {row['what']} {row['subject']}: {row['change']}{detail}",
                  markup=False)  # fmt: skip


class ProgressPrinter:
    """Prints `dc: message` with the seconds since it started, one line per change."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self._last: dict[str, str] = {}

    def __call__(self, dc: str, message: str) -> None:
        # A second wait over the same DCs (the canary's window check) repeats its first state.
        if self.enabled and self._last.get(dc) != message:
            self._last[dc] = message
            elapsed = time.monotonic() - self.started
            out.print(f"  [{elapsed:5.1f}s] {dc}: {message}", markup=False)


def names(values: Iterable[str]) -> str:
    """A comma-separated list, or "none"."""
    listed = ", ".join(values)
    return listed or "none"
