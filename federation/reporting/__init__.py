"""Central reports over merged histograms: percentiles, SLA attainment, worst groups,
completeness, daily and monthly rollups, their HTTP routes and a Grafana dashboard.

Library first: every report is a function taking the loaded config, a central InfluxDB client
and optionally the coordinator's ledger, returning a value object with `table_rows()` and
`to_json()`; the CLI and the HTTP routes only call these.
"""

from __future__ import annotations

from federation.coordinator.completeness import Completeness, completeness
from federation.reporting.arguments import Metric, parse_last, parse_metric, parse_threshold
from federation.reporting.daily import remerge_day
from federation.reporting.monthly import refresh_rollups, remerge_month
from federation.reporting.reports import percentile_report, sla_report, worst_report
from federation.reporting.results import (
    PercentileReport,
    PercentileRow,
    PeriodStatus,
    SlaReport,
    SlaRow,
    VersionChange,
    WorstReport,
    WorstRow,
)
from federation.reporting.rollups import (
    MONTHLY_MARKER_MEASUREMENT,
    ROLLUP_MARKER_MEASUREMENT,
    RemergeOutcome,
    covering_dimension_set,
    monthly_measurement,
    rollup_dimension_sets,
    rollup_measurement,
)

__all__ = [
    "MONTHLY_MARKER_MEASUREMENT",
    "ROLLUP_MARKER_MEASUREMENT",
    "Completeness",
    "Metric",
    "PercentileReport",
    "PercentileRow",
    "PeriodStatus",
    "RemergeOutcome",
    "SlaReport",
    "SlaRow",
    "VersionChange",
    "WorstReport",
    "WorstRow",
    "completeness",
    "covering_dimension_set",
    "monthly_measurement",
    "parse_last",
    "parse_metric",
    "parse_threshold",
    "percentile_report",
    "refresh_rollups",
    "remerge_day",
    "remerge_month",
    "rollup_dimension_sets",
    "rollup_measurement",
    "sla_report",
    "worst_report",
]
