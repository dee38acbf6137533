"""Test data for reports: a central InfluxDB filled by `window_points` from generated raw
values, and the exported raw values themselves, so every expected answer comes from them."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from federation.config import FederationConfig, load_config
from federation.core.aggregate import window_points
from federation.core.durations import format_influx_duration
from federation.core.influxql import quote_ident
from federation.core.lineprotocol import serialize
from federation.core.plan import AggregationPlan
from federation.core.points import Point
from federation.influx import InfluxClient

REPO = Path(__file__).resolve().parent.parent.parent
DIRECTIONS = ("in", "out")
MAILERS = ("mx1", "mx2")
CUSTOMERS = ("acme", "blue", "cyan")
DIMS = ("direction", "mailer", "customer")


def copy_config(target: Path) -> FederationConfig:
    """A private copy of the example federation's config, loaded."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "fleet.yaml", target / "fleet.yaml")
    shutil.copytree(REPO / "policies", target / "policies", dirs_exist_ok=True)
    shutil.copytree(REPO / "tickscripts", target / "tickscripts", dirs_exist_ok=True)
    return load_config(target)


def prepare_central(influx: InfluxClient, config: FederationConfig) -> None:
    """Create the central database and one retention policy per region duration."""
    database = config.fleet.central.database
    influx.create_database(database)
    for policy in config.policies.values():
        rp = policy.central.retention_policy
        duration = format_influx_duration(policy.central.retention)
        influx.execute(
            f"CREATE RETENTION POLICY {quote_ident(rp)} ON {quote_ident(database)} "
            f"DURATION {duration} REPLICATION 1"
        )


@dataclass
class Raw:
    """The exported raw events (after k-anonymity) of every shipped (dc, window)."""

    windows: dict[tuple[str, int], tuple[np.ndarray, list[tuple[str, ...]]]] = field(
        default_factory=dict
    )
    suppressed: dict[tuple[str, int], int] = field(default_factory=dict)
    events: dict[tuple[str, int], int] = field(default_factory=dict)

    def values(
        self,
        start_ns: int,
        end_ns: int,
        dcs: Iterable[str] | None = None,
        where: dict[str, str] | None = None,
    ) -> np.ndarray:
        """Exported values of windows starting in [start, end), optionally of one group."""
        wanted = None if dcs is None else set(dcs)
        parts = []
        for (dc, t), (values, keys) in self.windows.items():
            if not (start_ns <= t < end_ns) or (wanted is not None and dc not in wanted):
                continue
            if where:
                mask = np.array(
                    [
                        all((dc if d == "dc" else k[DIMS.index(d)]) == v for d, v in where.items())
                        for k in keys
                    ],
                    dtype=bool,
                )
                parts.append(values[mask] if len(keys) else values)
            else:
                parts.append(values)
        return np.concatenate(parts) if parts else np.zeros(0)


def nearest_rank(values: np.ndarray, p: float) -> float:
    """The exact nearest-rank percentile, as InfluxQL's percentile() defines it."""
    ordered = np.sort(values)
    rank = math.floor(len(ordered) * p / 100 + 0.5) - 1
    return float(ordered[rank])


def ship_window(
    plan: AggregationPlan,
    start_ns: int,
    rng: np.random.Generator,
    raw: Raw,
    *,
    n: int = 40,
    scale: dict[str, float] | None = None,
    run: int = 1,
) -> list[Point]:
    """Generate one window of raw events for `plan.dc`, record the exported ones, return the
    points the DC would ship (`window_points`)."""
    direction = rng.choice(DIRECTIONS, n, p=[0.7, 0.3])
    mailer = rng.choice(MAILERS, n, p=[0.8, 0.2])
    customer = rng.choice(CUSTOMERS, n, p=[0.5, 0.3, 0.2])
    factor = np.array([(scale or {}).get(c, 1.0) for c in customer])
    values = np.round(rng.lognormal(math.log(200), 0.8, n) * factor, 1)
    keys: list[tuple[str, ...]] = list(
        zip(direction.tolist(), mailer.tolist(), customer.tolist(), strict=True)
    )
    return ship_values(plan, start_ns, values, keys, raw, run=run)


def ship_values(
    plan: AggregationPlan,
    start_ns: int,
    values: np.ndarray,
    keys: Sequence[tuple[str, ...]],
    raw: Raw,
    *,
    run: int = 1,
) -> list[Point]:
    """The points of one window of given raw values (full-dimension keys), recorded in `raw`."""
    columns = [[k[DIMS.index(d)] for k in keys] for d in plan.dimensions]
    points = window_points(plan, start_ns, np.asarray(values, dtype=float), columns, run=run)
    sizes: dict[tuple[str, ...], int] = {}
    projected = [tuple(k[DIMS.index(d)] for d in plan.dimensions) for k in keys]
    for k in projected:
        sizes[k] = sizes.get(k, 0) + 1
    keep = np.array([sizes[k] >= plan.min_group_events for k in projected], dtype=bool)
    raw.windows[(plan.dc, start_ns)] = (
        np.asarray(values, dtype=float)[keep],
        [k for k, kept in zip(keys, keep.tolist(), strict=True) if kept],
    )
    raw.suppressed[(plan.dc, start_ns)] = int((~keep).sum())
    raw.events[(plan.dc, start_ns)] = len(values)
    return points


def write_points(influx: InfluxClient, plan: AggregationPlan, points: list[Point]) -> None:
    """Write points to central where the gateway would: the DC's central retention policy."""
    for i in range(0, len(points), 5000):
        influx.write(
            serialize(points[i : i + 5000]),
            database=plan.central_database,
            retention_policy=plan.central_retention_policy,
        )
