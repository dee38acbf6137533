"""A DC's kept findings, read back from its own InfluxDB for the region's security team.

Findings are personal data: they are read from the DC's raw database, where the detections
wrote them (`federation_findings`, under the raw retention policy), and nowhere else. A window
computed more than once may hold findings of an earlier run that the newest run no longer
finds (its median moved with late data): only the findings of each window's newest run (as its
run point in `federation_detection_runs` says) are listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federation.config import FederationConfig
from federation.core.clock import format_rfc3339
from federation.core.detection_plan import DETECTION_RUNS_MEASUREMENT, FINDINGS_MEASUREMENT
from federation.core.plan import raw_source
from federation.influx import rows
from federation.policy.retention import DEFAULT_TIMEOUT_S, connect


@dataclass(frozen=True)
class KeptFinding:
    """One finding as its DC keeps it."""

    detection: str
    window_start_ns: int
    key: str
    count: int
    threshold: float
    run: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": format_rfc3339(self.window_start_ns),
            "detection": self.detection,
            "key": self.key,
            "count": self.count,
            "threshold": self.threshold,
        }


def list_findings(
    config: FederationConfig,
    dc: str,
    *,
    since_ns: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[KeptFinding]:
    """The findings DC `dc` keeps (from `since_ns` on), newest run of each window, oldest
    window first and within a window the highest count first. ConfigError for an unknown DC,
    InfluxError when its InfluxDB fails."""
    datacenter = config.dc(dc)
    db, rp = datacenter.raw_database, config.policy_for(dc).raw.retention_policy
    where = f" WHERE time >= {since_ns}" if since_ns is not None else ""
    fields = '"detection", "key", "count", "threshold", "run"'
    findings_query = f"SELECT {fields} FROM {raw_source(db, rp, FINDINGS_MEASUREMENT)}{where}"
    runs_query = f'SELECT "detection", "run" FROM {raw_source(db, rp, DETECTION_RUNS_MEASUREMENT)}'
    with connect(datacenter.influxdb, timeout=timeout) as client:
        found = [
            KeptFinding(
                str(r["detection"]),
                int(r["time"]),
                str(r["key"]),
                int(r["count"]),
                float(r["threshold"]),
                int(r["run"]),
            )
            for r in rows(client.query(findings_query, database=db))
        ]
        newest = {
            (str(r["detection"]), int(r["time"])): int(r["run"])
            for r in rows(client.query(runs_query + where, database=db))
        }
    return sorted(
        (f for f in found if f.run == newest.get((f.detection, f.window_start_ns), f.run)),
        key=lambda f: (f.window_start_ns, f.detection, -f.count, f.key),
    )
