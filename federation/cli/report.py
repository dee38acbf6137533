"""`federation report percentiles|worst|sla|findings` and `federation grafana dashboard`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from federation.cli._common import (
    ConfigOption,
    FormatOption,
    OutputFormat,
    add_group,
    out,
    print_rows,
    write_or_print,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from federation.config import FederationConfig
    from federation.influx import InfluxClient

AggregationOption = Annotated[
    str, typer.Option("--aggregation", "-a", help="The aggregation to report on.")
]
PeriodOption = Annotated[
    str, typer.Option("--period", help="Calendar period: day, week (ISO, Monday), month, quarter.")
]
FromOption = Annotated[str, typer.Option("--from", help="First local day (YYYY-MM-DD).")]
ToOption = Annotated[
    str | None, typer.Option("--to", help="Last local day (YYYY-MM-DD); default: --from.")
]
TzOption = Annotated[str, typer.Option("--tz", help="IANA time zone of the calendar.")]
ByOption = Annotated[
    str, typer.Option("--by", help="Comma-separated split: dc and the aggregation's dimensions.")
]
DcsOption = Annotated[
    str | None, typer.Option("--dcs", help="Comma-separated DCs (default: every DC).")
]
CentralOption = Annotated[
    str | None,
    typer.Option(
        "--central-url",
        envvar="FEDERATION_CENTRAL_URL",
        help="Central InfluxDB URL (default: fleet.yaml central.influxdb.url).",
    ),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger-url",
        envvar="FEDERATION_LEDGER_URL",
        help="Ledger database URL for completeness (default: fleet.yaml central.ledger_url).",
    ),
]
NoLedgerOption = Annotated[
    bool, typer.Option("--no-ledger", help="Skip completeness (no ledger is read).")
]
NoRollupsOption = Annotated[
    bool, typer.Option("--no-rollups", help="Read hourly windows only, never daily rollups.")
]


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@contextmanager
def _sources(
    config_dir: Path, central_url: str | None, ledger_url: str | None, no_ledger: bool
) -> Iterator[tuple[FederationConfig, InfluxClient, Engine | None]]:
    from federation.config import load_config
    from federation.coordinator.ledger import check_ledger, create_ledger_engine
    from federation.coordinator.retired import with_retired
    from federation.reporting._central import open_central

    config = load_config(config_dir)
    engine = None
    if not no_ledger:
        url = ledger_url or config.fleet.central.ledger_url
        check_ledger(url)
        engine = create_ledger_engine(url)
    try:
        with open_central(config, central_url) as central:
            # An aggregation removed from the config keeps its history at central.
            yield with_retired(config, engine), central, engine
    finally:
        if engine is not None:
            engine.dispose()


def _print(report: Any, fmt: OutputFormat, title: str) -> None:
    if fmt is OutputFormat.json:
        out.print_json(json.dumps(report.to_json()))
        return
    print_rows(report.table_rows(), report.columns(), fmt, title)


def percentiles(
    aggregation: AggregationOption,
    from_: FromOption,
    period: PeriodOption = "month",
    to: ToOption = None,
    tz: TzOption = "UTC",
    by: ByOption = "",
    dcs: DcsOption = None,
    percentiles: Annotated[
        str | None,
        typer.Option("--percentiles", help="Comma-separated, e.g. 50,95,99 (default: the plan's)."),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    config: ConfigOption = Path("."),
    central_url: CentralOption = None,
    ledger_url: LedgerOption = None,
    no_ledger: NoLedgerOption = False,
    no_rollups: NoRollupsOption = False,
) -> None:
    """Percentiles per calendar period and group, merged from histograms.

    Each row carries its error bound (±alpha), the period's share of events suppressed by
    k-anonymity, its completeness from the ledger, and where the plan version changes.
    """
    from federation.errors import InvalidInput
    from federation.reporting import percentile_report

    try:
        ps = [float(p) for p in _split(percentiles)] or None
    except ValueError:
        raise InvalidInput(f"--percentiles {percentiles!r}: write numbers like 50,95,99") from None
    with _sources(config, central_url, ledger_url, no_ledger) as (cfg, central, ledger):
        report = percentile_report(
            cfg, central, aggregation, period=period, from_date=from_, to_date=to or from_,
            tz=tz, by=_split(by), dcs=_split(dcs), percentiles=ps, ledger=ledger,
            use_rollups=not no_rollups,
        )  # fmt: skip
    _print(report, fmt, f"{aggregation}: percentiles per {period} ({tz})")


def worst(
    aggregation: AggregationOption,
    last: Annotated[str, typer.Option("--last", help="How far back, e.g. 24h or 7d.")] = "24h",
    by: ByOption = "customer",
    top: Annotated[int, typer.Option("--top", help="How many groups.")] = 20,
    metric: Annotated[
        str, typer.Option("--metric", help="p99, p95, … or count_over:<threshold> (e.g. 30s).")
    ] = "p99",
    dcs: DcsOption = None,
    fmt: FormatOption = OutputFormat.table,
    config: ConfigOption = Path("."),
    central_url: CentralOption = None,
    ledger_url: LedgerOption = None,
    no_ledger: NoLedgerOption = False,
    no_rollups: NoRollupsOption = False,
) -> None:
    """The groups with the worst metric over the last whole windows."""
    from federation.core.clock import SystemClock
    from federation.reporting import parse_last, worst_report

    with _sources(config, central_url, ledger_url, no_ledger) as (cfg, central, ledger):
        report = worst_report(
            cfg, central, aggregation, last_ns=parse_last(last), now_ns=SystemClock().now_ns(),
            by=_split(by), top=top, metric=metric, dcs=_split(dcs), ledger=ledger,
            use_rollups=not no_rollups,
        )  # fmt: skip
    _print(report, fmt, f"{aggregation}: worst {top} by {report.metric}, last {last}")


def sla(
    aggregation: AggregationOption,
    threshold: Annotated[
        str, typer.Option("--threshold", help="In the aggregation's unit, or 30s, 250ms.")
    ],
    from_: FromOption,
    period: PeriodOption = "month",
    to: ToOption = None,
    tz: TzOption = "UTC",
    by: ByOption = "",
    dcs: DcsOption = None,
    fmt: FormatOption = OutputFormat.table,
    config: ConfigOption = Path("."),
    central_url: CentralOption = None,
    ledger_url: LedgerOption = None,
    no_ledger: NoLedgerOption = False,
    no_rollups: NoRollupsOption = False,
) -> None:
    """Share of events at or under the threshold per period and group, as bounds.

    The threshold is in the aggregation's unit (ms): 30s means 30000.
    """
    from federation.reporting import parse_threshold, sla_report

    with _sources(config, central_url, ledger_url, no_ledger) as (cfg, central, ledger):
        spec = cfg.aggregations.get(aggregation)
        unit = spec.source.unit if spec else "ms"
        report = sla_report(
            cfg, central, aggregation, threshold=parse_threshold(threshold, unit),
            period=period, from_date=from_, to_date=to or from_, tz=tz, by=_split(by),
            dcs=_split(dcs), ledger=ledger, use_rollups=not no_rollups,
        )  # fmt: skip
    _print(report, fmt, f"{aggregation}: share <= {threshold} per {period} ({tz})")


def findings(
    from_: FromOption,
    period: PeriodOption = "day",
    to: ToOption = None,
    tz: TzOption = "UTC",
    by: Annotated[str, typer.Option("--by", help="Split by dc or detection.")] = "dc",
    dcs: DcsOption = None,
    fmt: FormatOption = OutputFormat.table,
    config: ConfigOption = Path("."),
    central_url: CentralOption = None,
) -> None:
    """How many keys each DC's detections evaluated and how many were findings, per period.

    Only counts: the findings themselves (personal data) never leave their DC; read them there
    with `federation findings`.
    """
    from federation.config import load_config
    from federation.reporting._central import open_central
    from federation.reporting.findings import findings_report

    cfg = load_config(config)
    with open_central(cfg, central_url) as central:
        report = findings_report(
            cfg, central, period=period, from_date=from_, to_date=to or from_, tz=tz, by=by,
            dcs=_split(dcs),
        )  # fmt: skip
    _print(report, fmt, f"detection findings per {period} and {by} ({tz})")


def dashboard(
    aggregation: Annotated[
        str | None,
        typer.Option("--aggregation", "-a", help="Default: the one with the most dimensions."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON here (default: stdout).")
    ] = None,
    influx_datasource: Annotated[
        str, typer.Option("--influx-datasource", help="Grafana uid of the central InfluxDB.")
    ] = "federation-central",
    api_datasource: Annotated[
        str, typer.Option("--api-datasource", help="Grafana uid of the Infinity data source.")
    ] = "federation-api",
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", help="Coordinator URL (default: fleet.yaml coordinator_url)."),
    ] = None,
    tz: TzOption = "UTC",
    config: ConfigOption = Path("."),
) -> None:
    """Write a provisioning-ready Grafana dashboard over central's summary measurements."""
    from federation.config import load_config
    from federation.reporting.grafana import dashboard as build

    cfg = load_config(config)
    board = build(
        cfg, aggregation, influx_datasource=influx_datasource, api_datasource=api_datasource,
        api_url=api_url, tz=tz,
    )  # fmt: skip
    text = json.dumps(board, indent=2) + "\n"
    write_or_print(text, out_file, f"{len(board['panels'])} panels")


def register(app: typer.Typer) -> None:
    """Add the `report` and `grafana` command groups to `app`."""
    add_group(
        app,
        "report",
        "Central reports from merged histograms: percentiles, worst groups, SLA; findings counts.",
        {"percentiles": percentiles, "worst": worst, "sla": sla, "findings": findings},
    )
    add_group(app, "grafana", "Grafana provisioning for central reports.", {"dashboard": dashboard})
