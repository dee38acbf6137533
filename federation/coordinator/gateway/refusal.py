"""A refused batch: the rule it broke and where, never the offending value.

Every rule of the gateway (`federation.coordinator.gateway.rules`) and its reader
(`federation.coordinator.gateway.parse`) refuse a batch as a whole with a `Refusal`; its answer
and its log line name the rule, the measurement, the key and the line, and withhold anything
that looks like personal data even in a name.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from federation.core.pii import personal_data_kind

log = logging.getLogger(__name__)


class Refusal(Exception):
    """Why a whole batch is refused. Carries no personal-data value."""

    def __init__(
        self,
        rule: str,
        message: str,
        *,
        status: int = 400,
        measurement: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        # A hostile body can put personal data in a name, which the answer and the log repeat.
        message = _withheld(message) or ""
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.status = status
        self.measurement = _withheld(measurement)
        self.key = _withheld(key)
        self.line = line

    def body(self) -> dict[str, Any]:
        """The JSON answer: `error` first, as InfluxDB clients expect, then the details."""
        return {
            "error": self.message,
            "rule": self.rule,
            "measurement": self.measurement,
            "key": self.key,
            "line": self.line,
        }


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _withheld(text: str | None) -> str | None:
    """`text`, with any part that looks like personal data withheld."""
    if text is None or personal_data_kind(text) is None:
        return text
    text = _QUOTED.sub("'<withheld>'", text)
    return text if personal_data_kind(text) is None else "<withheld: looks like personal data>"


def log_refusal(dc: str, refusal: Refusal) -> None:
    """Log a refused batch by rule, DC, measurement and key only: never a value."""
    log.warning(
        "gateway refused a batch from %s: rule=%s measurement=%s key=%s line=%s",
        dc,
        refusal.rule,
        refusal.measurement,
        refusal.key,
        refusal.line,
    )
