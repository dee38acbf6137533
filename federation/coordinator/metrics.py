"""The coordinator's `/metrics`, written through `prometheus_client`.

Each family is read when Prometheus scrapes: from the ledger (windows, backfills, agents,
deployments) and from the replica's own counters (`GatewayMetrics`: gateway batches, refusals
by rule, request durations). The family names are constants here, written once: the alerting
rules (`federation.coordinator.alerts`) read them from this module.

    federation_windows{dc,aggregation,state}                   gauge: stored windows (the
                                                               label names a detection too)
    federation_window_oldest_open_age_seconds{dc,aggregation}  gauge: now - end of the oldest
                                                               stored window not verified or
                                                               empty (0 when there is none)
    federation_backfills{state}                                gauge: requests per state
    federation_backfill_queue{dc}                              gauge: queued or running
    federation_gateway_refusals_total{rule}                    counter
    federation_gateway_batches_total{outcome}                  counter
    federation_gateway_points_total                            counter
    federation_gateway_request_duration_seconds                histogram: POST /write
    federation_agent_last_seen_seconds{dc}                     gauge: Unix time
    federation_agent_clock_skew_seconds{dc}, …_large{dc}       gauge
    federation_retention_drift{dc}                             gauge: 1 when drifted
    federation_rollout_pending{dc}                             gauge: aggregations whose
                                                               desired version is not running
    federation_windows_personal_values{dc,aggregation}         gauge: windows with events
                                                               withheld for a personal-looking
                                                               dimension value
    federation_windows_refused{dc,aggregation}                 gauge: windows whose latest
                                                               shipment the gateway refused
    …_latest_start_seconds{dc,aggregation} of both             gauge: the newest one's start
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from federation.coordinator.clocks import clock_skews
from federation.coordinator.ledger import BackfillRow, DcRow, DeploymentRow, WindowRow
from federation.coordinator.planner import BACKFILL_STATES, QUEUED, RUNNING
from federation.coordinator.tracking import DONE_STATES, WindowState

if TYPE_CHECKING:
    from federation.coordinator.service import Coordinator

WINDOWS = "federation_windows"
OLDEST_OPEN_WINDOW_AGE = "federation_window_oldest_open_age_seconds"
BACKFILLS = "federation_backfills"
BACKFILL_QUEUE = "federation_backfill_queue"
GATEWAY_REFUSALS = "federation_gateway_refusals_total"
GATEWAY_BATCHES = "federation_gateway_batches_total"
GATEWAY_POINTS = "federation_gateway_points_total"
GATEWAY_REQUEST_DURATION = "federation_gateway_request_duration_seconds"
AGENT_LAST_SEEN = "federation_agent_last_seen_seconds"
AGENT_CLOCK_SKEW = "federation_agent_clock_skew_seconds"
AGENT_CLOCK_SKEW_LARGE = "federation_agent_clock_skew_large"
RETENTION_DRIFT = "federation_retention_drift"
ROLLOUT_PENDING = "federation_rollout_pending"
WINDOWS_PERSONAL_VALUES = "federation_windows_personal_values"
WINDOWS_REFUSED = "federation_windows_refused"
LATEST_START = "_latest_start_seconds"

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _LedgerCollector(Collector):
    """Reads every family of one coordinator at scrape time."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator
        now_ns = c.clock.now_ns()
        windows = GaugeMetricFamily(
            WINDOWS, "Windows stored in the ledger, by DC, aggregation and state.",
            labels=["dc", "aggregation", "state"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            OLDEST_OPEN_WINDOW_AGE,
            "Seconds since the end of the oldest stored window that is not verified or empty "
            "(0 when none is open); an ended window nothing was shipped for is stored as "
            "missing at its deadline.",
            labels=["dc", "aggregation"],
        )
        backfills = GaugeMetricFamily(BACKFILLS, "Backfill requests, by state.", labels=["state"])
        queue = GaugeMetricFamily(
            BACKFILL_QUEUE, "Backfill requests queued for, or running at, each DC's agent.",
            labels=["dc"],
        )  # fmt: skip
        last_seen = GaugeMetricFamily(
            AGENT_LAST_SEEN, "When each DC's agent last reported (Unix time).", labels=["dc"]
        )
        skew = GaugeMetricFamily(
            AGENT_CLOCK_SKEW, "Each DC agent's clock minus the coordinator's, at its last report.",
            labels=["dc"],
        )  # fmt: skip
        skew_large = GaugeMetricFamily(
            AGENT_CLOCK_SKEW_LARGE, "1 when a DC agent's clock is off by more than the tolerance.",
            labels=["dc"],
        )  # fmt: skip
        drift = GaugeMetricFamily(
            RETENTION_DRIFT,
            "1 when a DC's raw retention is not what the config declares (a refused shrink, or "
            "a failure to apply it).",
            labels=["dc"],
        )
        pending = GaugeMetricFamily(
            ROLLOUT_PENDING,
            "Aggregations of each DC whose desired plan version its agent does not report "
            "running and healthy.",
            labels=["dc"],
        )
        # Imported here: status imports the coordinator's other modules, as this one does.
        from federation.coordinator.status import retention_problems

        done = [s.value for s in DONE_STATES]
        dcs = sorted(c.config.fleet.dcs)
        with c.ledger.session() as session:
            stored = {
                (dc, aggregation, state): int(n)
                for dc, aggregation, state, n in session.execute(
                    select(
                        WindowRow.dc, WindowRow.aggregation, WindowRow.state, func.count()
                    ).group_by(WindowRow.dc, WindowRow.aggregation, WindowRow.state)
                )
            }
            open_since = {
                (dc, aggregation): int(start)
                for dc, aggregation, start in session.execute(
                    select(WindowRow.dc, WindowRow.aggregation, func.min(WindowRow.start_ns))
                    .where(WindowRow.state.not_in(done))
                    .group_by(WindowRow.dc, WindowRow.aggregation)
                )
            }
            states = dict.fromkeys(BACKFILL_STATES, 0)
            by_dc = dict.fromkeys(dcs, 0)
            for dc, state, n in session.execute(
                select(BackfillRow.dc, BackfillRow.state, func.count()).group_by(
                    BackfillRow.dc, BackfillRow.state
                )
            ):
                states[state] = states.get(state, 0) + int(n)
                if state in (QUEUED, RUNNING):
                    by_dc[dc] = by_dc.get(dc, 0) + int(n)
            seen = session.execute(select(DcRow.name, DcRow.last_seen_ns)).all()
            skews = clock_skews(session, c.settings.max_clock_skew_ns)
            drifted = {r.dc for r in retention_problems(session, c.config)}
            reported = {dc for dc, last in seen if last is not None}
            # A DC whose agent never reported is the agent-not-seen alert's, not a rollout's.
            not_running = Counter(
                d.dc
                for d in session.scalars(select(DeploymentRow))
                if d.dc in reported
                and (d.running_version != d.desired_version or d.healthy is False)
            )
        # Every (dc, aggregation or detection) has a `missing` sample, 0 when none, so that a
        # rule on it reads a value rather than nothing.
        tracked = c.config.tracked
        for dc in dcs:
            for aggregation in tracked:
                stored.setdefault((dc, aggregation, WindowState.MISSING.value), 0)
        for labels, n in sorted(stored.items()):
            windows.add_metric(list(labels), n)
        for dc in dcs:
            for aggregation, spec in sorted(tracked.items()):
                start = open_since.get((dc, aggregation))
                age = 0.0 if start is None else max(0, now_ns - start - spec.window) / 1e9
                oldest.add_metric([dc, aggregation], age)
            queue.add_metric([dc], by_dc.get(dc, 0))
            drift.add_metric([dc], int(dc in drifted))
            pending.add_metric([dc], not_running.get(dc, 0))
        for state, n in sorted(states.items()):
            backfills.add_metric([state], n)
        for dc, last in sorted(seen):
            if last is not None:
                last_seen.add_metric([dc], round(last / 1e9, 3))
        for s in skews:
            skew.add_metric([s.dc], round(s.skew_ns / 1e9, 3))
            skew_large.add_metric([s.dc], int(s.large))
        yield from (windows, oldest, backfills, queue)
        yield from self._gateway()
        yield from (last_seen, skew, skew_large, drift, pending)
        yield from self._notices()

    def _notices(self) -> Iterator[Metric]:
        """Per (dc, aggregation): the windows whose data at central is not the whole story."""
        from federation.coordinator.status import notice_counts

        counts = notice_counts(self.coordinator.ledger)
        for name, kind, what in (
            (WINDOWS_PERSONAL_VALUES, "personal_values",
             "with events withheld because a dimension value looked like personal data"),
            (WINDOWS_REFUSED, "refused",
             "whose latest shipment the gateway refused (none accepted since)"),
        ):  # fmt: skip
            windows = GaugeMetricFamily(name, f"Windows {what}.", labels=["dc", "aggregation"])
            latest = GaugeMetricFamily(
                name + LATEST_START,
                f"Start of the newest window {what} (Unix time).",
                labels=["dc", "aggregation"],
            )
            for (dc, aggregation), notice in sorted(counts[kind].items()):
                windows.add_metric([dc, aggregation], notice.windows)
                latest.add_metric([dc, aggregation], notice.latest_start_ns / 1e9)
            yield from (windows, latest)

    def _gateway(self) -> Iterator[Metric]:
        refusals, batches, points = self.coordinator.metrics.snapshot()
        refused = CounterMetricFamily(
            GATEWAY_REFUSALS, "Batches the gateway refused, by rule.", labels=["rule"]
        )
        for rule, n in sorted(refusals.items()):
            refused.add_metric([rule], n)
        outcomes = CounterMetricFamily(
            GATEWAY_BATCHES, "Write batches, by outcome.", labels=["outcome"]
        )
        for outcome, n in sorted(batches.items()):
            outcomes.add_metric([outcome], n)
        stored = CounterMetricFamily(GATEWAY_POINTS, "Points accepted and stored in central.")
        stored.add_metric([], points)
        buckets, total = self.coordinator.metrics.durations()
        duration = HistogramMetricFamily(
            GATEWAY_REQUEST_DURATION, "How long the gateway took to answer each POST /write.",
            buckets=buckets, sum_value=total,
        )  # fmt: skip
        yield from (refused, outcomes, stored, duration)


def metrics_text(coordinator: Coordinator) -> bytes:
    """Every family in Prometheus' text format (0.0.4), read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LedgerCollector(coordinator))
    return generate_latest(registry)


__all__ = [
    "AGENT_CLOCK_SKEW",
    "AGENT_CLOCK_SKEW_LARGE",
    "AGENT_LAST_SEEN",
    "BACKFILLS",
    "BACKFILL_QUEUE",
    "CONTENT_TYPE",
    "GATEWAY_BATCHES",
    "GATEWAY_POINTS",
    "GATEWAY_REFUSALS",
    "GATEWAY_REQUEST_DURATION",
    "OLDEST_OPEN_WINDOW_AGE",
    "RETENTION_DRIFT",
    "ROLLOUT_PENDING",
    "WINDOWS",
    "metrics_text",
]
