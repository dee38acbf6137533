"""The names of the coordinator's Prometheus metric families, written once: `/metrics` writes
them and the alerting rules (`federation.coordinator.alerts`) read them."""

from __future__ import annotations

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
