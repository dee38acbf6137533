"""Helpers shared by the coordinator tests: plans, real window batches, central parameters."""

from __future__ import annotations

import numpy as np

from federation.config import FederationConfig
from federation.config.resolve import resolve_plan
from federation.core.lineprotocol import serialize
from federation.core.plan import AggregationPlan
from federation.core.points import Point

HOUR = 3600 * 10**9
READER = "reader-secret"


def token(dc: str) -> str:
    return f"agent-secret-{dc}"


def plan_of(
    config: FederationConfig, dc: str, aggregation: str = "delivery_direction"
) -> AggregationPlan:
    return resolve_plan(config, aggregation, dc)


def window_batch(
    plan: AggregationPlan, start_ns: int, *, run: int = 1, events: int = 40, seed: int = 7
) -> list[Point]:
    """The points a DC ships for one window of `plan`: real summaries, sketches and manifest."""
    from federation.core.aggregate import window_points

    rng = np.random.default_rng(seed)
    values = rng.lognormal(5.0, 1.0, events)
    dims = [list(rng.choice(["in", "out"], events)) for _ in plan.dimensions]
    if "mailer" in plan.dimensions:
        dims[plan.dimensions.index("mailer")] = ["mx1"] * events
    if "customer" in plan.dimensions:
        dims[plan.dimensions.index("customer")] = ["c1042"] * events
    return window_points(plan, start_ns, values, dims, run=run)


def body(points: list[Point]) -> bytes:
    return serialize(points)


def central_params(config: FederationConfig, dc: str) -> dict[str, str]:
    return {
        "db": config.fleet.central.database,
        "rp": config.policy_for(dc).central.retention_policy,
    }
