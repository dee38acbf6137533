"""Aggregations the config no longer declares but the ledger still knows: their history stays
reportable.

Removing `tickscripts/<name>.yaml` and rolling the removal out stops the agents, but central
keeps the aggregation's points and the ledger its windows. Status and reports describe an
aggregation from its declaration (window, dimensions, unit); for a removed one that
declaration is rebuilt from the newest plan version the ledger stored for it.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from federation.config import Aggregation, FederationConfig
from federation.coordinator.ledger import Ledger, PlanVersionRow
from federation.core.detection_plan import DETECTION_KIND
from federation.core.durations import format_duration

__all__ = ["retired_aggregations", "with_retired"]


def retired_aggregations(
    ledger: Ledger | Engine, config: FederationConfig
) -> dict[str, Aggregation]:
    """name -> the declaration of every aggregation the ledger stored a plan for and the config
    no longer declares, rebuilt from its newest stored plan (dimensions: every one any DC
    exported or dropped)."""
    engine = ledger.engine if isinstance(ledger, Ledger) else ledger
    with Session(engine) as session:
        rows = session.execute(
            select(PlanVersionRow.aggregation, PlanVersionRow.plan)
            .where(PlanVersionRow.aggregation.not_in(sorted(config.aggregations)))
            .order_by(PlanVersionRow.created_ns, PlanVersionRow.id)
        ).all()
    newest = {}
    dimensions: dict[str, dict[str, None]] = {}
    for name, plan in rows:
        if plan.get("kind") == DETECTION_KIND or name in config.detections:
            continue  # a detection's history is counts, not an aggregation's summaries
        newest[name] = plan
        seen = dimensions.setdefault(name, {})
        seen.update(dict.fromkeys([*plan["dimensions"], *plan["dropped_dimensions"]]))
    return {
        name: Aggregation.model_validate(
            {
                "name": name,
                "description": "removed from the config; described by its last stored plan",
                "source": {
                    "measurement": plan["measurement"],
                    "field": plan["value_field"],
                    "unit": plan["unit"],
                },
                "dimensions": list(dimensions[name]),
                "window": format_duration(plan["window_ns"]),
                "lookback": format_duration(plan["lookback_ns"]),
                "grace": format_duration(plan["grace_ns"]),
                "percentiles": plan["percentiles"],
                "accuracy": plan["accuracy"],
                "template": plan["template"],
            }
        )
        for name, plan in sorted(newest.items())
    }


def with_retired(config: FederationConfig, ledger: Ledger | Engine | None) -> FederationConfig:
    """`config` with the retired aggregations the ledger knows added (unchanged without a
    ledger). For reading history only: nothing is deployed from it."""
    if ledger is None:
        return config
    retired = retired_aggregations(ledger, config)
    if not retired:
        return config
    return dataclasses.replace(config, aggregations={**retired, **config.aggregations})
