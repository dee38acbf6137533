"""A provisioning-ready Grafana dashboard over central's summary measurements.

For each split (a dimension, or the DC) the dashboard has two panels:

- per window: the exact `p*` fields as shipped, read with InfluxQL from the summary
  measurement (GROUP BY every tag, no aggregate function: each series is one group of one DC,
  one point per window);
- per day/week/month: percentiles merged from histograms, read from the coordinator's JSON API
  through the Infinity data source.

A percentile over a longer range is never computed by averaging per-window percentiles (that
figure is meaningless): no InfluxQL query in the dashboard applies a function to a `p*` field.

A last row has a panel per detection: each DC's findings per window, from the detection's count
points (central holds nothing else of a detection: no key, no value of one).
"""

from __future__ import annotations

from typing import Any

from federation.config import FederationConfig
from federation.core.influxql import quote_ident
from federation.core.stats import percentile_field
from federation.errors import InvalidInput

INFINITY_TYPE = "yesoreyeram-infinity-datasource"
INFLUX_TYPE = "influxdb"
REPORTS_PATH = "/api/v1/reports"


def _default_aggregation(config: FederationConfig) -> str:
    if not config.aggregations:
        raise InvalidInput("the config declares no aggregation")
    return max(sorted(config.aggregations), key=lambda n: len(config.aggregations[n].dimensions))


def _splits(dimensions: tuple[str, ...]) -> list[str]:
    # The first dimension, then the DC, then the rest: direction, dc, mailer, customer.
    return [*dimensions[:1], "dc", *dimensions[1:]]


def _sources(config: FederationConfig, aggregation: str) -> str:
    database = config.fleet.central.database
    rps = sorted({p.central.retention_policy for p in config.policies.values()})
    return ", ".join(
        ".".join(quote_ident(part) for part in (database, rp, aggregation)) for rp in rps
    )


def _variable_filter(tags: list[str]) -> str:
    return " AND ".join(f"{quote_ident(t)} =~ /^${t}$/" for t in tags)


def window_query(config: FederationConfig, aggregation: str) -> str:
    """The InfluxQL of the per-window panels: the chosen exact `p*` field of every group."""
    dims = list(config.aggregations[aggregation].dimensions)
    tags = ["dc", *dims]
    return (
        f'SELECT "$percentile" FROM {_sources(config, aggregation)} '
        f"WHERE $timeFilter AND {_variable_filter(tags)} "
        f"GROUP BY {', '.join(quote_ident(t) for t in tags)}"
    )


def detection_query(config: FederationConfig, detection: str) -> str:
    """The InfluxQL of a detection's panel: each chosen DC's findings per window."""
    return (
        f'SELECT "findings" FROM {_sources(config, detection)} '
        f'WHERE $timeFilter AND {_variable_filter(["dc"])} GROUP BY "dc"'
    )


def _detection_panels(
    config: FederationConfig, influx: dict[str, str], first_id: int, y: int
) -> list[dict[str, Any]]:
    """The detections' row: a half-width panel of findings per window per detection."""
    if not config.detections:
        return []
    panels: list[dict[str, Any]] = [
        {
            "id": first_id,
            "type": "row",
            "title": "detections: findings per window (counts only; the findings stay in each DC)",
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }
    ]
    for index, name in enumerate(sorted(config.detections)):
        target = {
            "rawQuery": True,
            "resultFormat": "time_series",
            "query": detection_query(config, name),
            "alias": "$tag_dc",
        }
        panel = _timeseries_panel(
            first_id + 1 + index, f"{name}: findings per window by dc",
            config.detections[name].description, influx,
            x=12 * (index % 2), y=y + 1 + 9 * (index // 2), unit="short", target=target,
        )  # fmt: skip
        panels.append(panel)
    return panels


def _tag_variable(
    config: FederationConfig, aggregation: str, tag: str, ds: dict[str, str]
) -> dict[str, Any]:
    query = f"SHOW TAG VALUES FROM {quote_ident(aggregation)} WITH KEY = {quote_ident(tag)}"
    return {
        "name": tag,
        "label": tag,
        "type": "query",
        "datasource": ds,
        "query": query,
        "definition": query,
        "refresh": 1,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def _custom_variable(name: str, values: list[str], current: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "custom",
        "query": ",".join(values),
        "current": {"text": current, "value": current},
        "options": [{"text": v, "value": v, "selected": v == current} for v in values],
        "includeAll": False,
        "multi": False,
    }


def _timeseries_panel(
    panel_id: int,
    title: str,
    description: str,
    datasource: dict[str, str],
    *,
    x: int,
    y: int,
    unit: str,
    target: dict[str, Any],
) -> dict[str, Any]:
    """A half-width time series panel with one query (`target`) on `datasource`."""
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": datasource,
        "gridPos": {"h": 9, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "datasource": datasource, **target}],
    }


def dashboard(
    config: FederationConfig,
    aggregation: str | None = None,
    *,
    influx_datasource: str = "federation-central",
    api_datasource: str = "federation-api",
    api_url: str | None = None,
    tz: str = "UTC",
) -> dict[str, Any]:
    """The dashboard JSON (a dict, ready for `json.dumps` into a provisioning directory).

    Guarantees: one row per split (the first dimension, dc, the other dimensions), each with a
    per-window InfluxQL panel reading exact `p*` fields and a per-period panel reading merged
    percentiles from `<api_url>/api/v1/reports/<aggregation>/percentiles`; data sources are
    referenced by uid; no InfluxQL aggregates a `p*` field. InvalidInput for an unknown
    aggregation.
    """
    name = aggregation or _default_aggregation(config)
    spec = config.aggregations.get(name)
    if spec is None:
        raise InvalidInput(f"unknown aggregation {name!r}")
    base = (api_url or config.fleet.central.coordinator_url).rstrip("/")
    influx = {"type": INFLUX_TYPE, "uid": influx_datasource}
    api = {"type": INFINITY_TYPE, "uid": api_datasource}
    fields = [percentile_field(p) for p in spec.percentiles]
    current = "p99" if "p99" in fields else fields[-1]
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    query = window_query(config, name)
    for split in _splits(spec.dimensions):
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": f"by {split}",
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        others = [t for t in ("dc", *spec.dimensions) if t != split]
        alias = f"$tag_{split} " + " ".join(f"$tag_{t}" for t in others)
        panels.append(
            _timeseries_panel(
                next_id + 1,
                f"$percentile per window by {split} (exact, as shipped)",
                "Exact per-window percentiles of each group; never averaged.",
                influx,
                x=0,
                y=y,
                unit=spec.source.unit,
                target={
                    "rawQuery": True,
                    "resultFormat": "time_series",
                    "query": query,
                    "alias": alias,
                },
            )
        )
        url = (
            f"{base}{REPORTS_PATH}/{name}/percentiles?period=$period&tz={tz}&by={split}"
            "&from=${__from:date:YYYY-MM-DD}&to=${__to:date:YYYY-MM-DD}&shape=rows"
        )
        panels.append(
            _timeseries_panel(
                next_id + 2,
                f"$percentile per $period by {split} (merged histograms, ±alpha)",
                "Percentiles merged from the windows' histograms over calendar "
                f"periods in {tz}, from the coordinator's report API.",
                api,
                x=12,
                y=y,
                unit=spec.source.unit,
                target={
                    "type": "json",
                    "source": "url",
                    "format": "timeseries",
                    "parser": "backend",
                    "url": url,
                    "url_options": {"method": "GET"},
                    "root_selector": "",
                    "columns": [
                        {"selector": "start", "text": "time", "type": "timestamp"},
                        {"selector": split, "text": split, "type": "string"},
                        {"selector": "$percentile", "text": "$percentile", "type": "number"},
                    ],
                },
            )
        )
        y += 9
        next_id += 3
    panels += _detection_panels(config, influx, next_id, y)
    variables = [
        _custom_variable("percentile", fields, current),
        _custom_variable("period", ["day", "week", "month", "quarter"], "day"),
        *[_tag_variable(config, name, t, influx) for t in ("dc", *spec.dimensions)],
    ]
    return {
        "id": None,
        "uid": f"federation-{name}"[:40],
        "title": f"federation: {name}",
        "description": spec.description,
        "tags": ["federation", name],
        "timezone": tz,
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "",
        "time": {"from": "now-7d", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }
