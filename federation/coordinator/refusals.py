"""Refused shipments, remembered against the windows they were for.

The gateway refuses a batch as a whole and the sender (Kapacitor's `influxDBOut`, or the agent
after its retries) gives up on it. Where the ledger already holds the window — typically
`verified`, from an earlier run — central keeps that older data, so the refusal is written on
the window (`tracking.record_refusal`): `federation status` and `/metrics` show it until a
shipment of the window is accepted. Only window keys are read from the refused body, never a
value.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from federation.coordinator.gateway.parse import parse_body
from federation.coordinator.gateway.refusal import Refusal
from federation.coordinator.gateway.rules import GatewayChecker
from federation.coordinator.ledger import Ledger
from federation.coordinator.tracking import record_refusal
from federation.core.plan import MANIFEST_MEASUREMENT
from federation.core.windows import align

log = logging.getLogger(__name__)


def refused_windows(
    checker: GatewayChecker, dc: str, body: bytes, precision: str, now_ns: int
) -> set[tuple[str, int]]:
    """The (aggregation, window start) pairs of `dc`'s plans that a refused body was for.

    Empty when the body does not parse: then nothing in it can be tied to a window.
    """
    try:
        lines = parse_body(body, precision, now_ns)
    except Refusal:
        return set()
    plans = checker.plans_for(dc)
    found: set[tuple[str, int]] = set()
    for ln in lines:
        point = ln.point
        if point.measurement == MANIFEST_MEASUREMENT:
            aggregation = point.tags.get("aggregation", "")
        else:
            aggregation = point.measurement
        entries = plans.get(aggregation)
        if entries:
            found.add((aggregation, align(point.time_ns, entries[0].plan.window_ns)))
    return found


def note_refusal(
    ledger: Ledger,
    checker: GatewayChecker,
    dc: str,
    body: bytes,
    precision: str,
    refusal: Refusal,
    now_ns: int,
) -> int:
    """Record `refusal` on every stored window of `dc` the refused `body` was for; return how
    many. A ledger failure is logged and ignored: the answer to the sender does not change."""
    windows = refused_windows(checker, dc, body, precision, now_ns)
    if not windows:
        return 0
    where = f", key {refusal.key}" if refusal.key else ""
    message = f"the gateway refused a shipment (rule {refusal.rule}{where}): {refusal.message}"
    try:
        return record_refusal(ledger, dc, windows, message, now_ns)
    except SQLAlchemyError as exc:  # the refusal itself stands; only its note is lost
        log.error("could not record a refused shipment of %s: %s", dc, exc.__class__.__name__)
        return 0
