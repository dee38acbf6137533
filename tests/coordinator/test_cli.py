"""`federation status` and `federation backfill` read and write the ledger directly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from typer.testing import CliRunner

from federation.cli.coordinator import register
from federation.config import load_config
from federation.coordinator.desired import sync_desired
from federation.coordinator.ledger import open_ledger

from .helpers import HOUR


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    return app


def test_status_and_backfill_commands(config_dir: Path, ledger_url: str) -> None:
    config = load_config(config_dir)
    now = time.time_ns()
    with open_ledger(ledger_url) as ledger:
        sync_desired(ledger, config, now, track_from_ns=now - 10 * HOUR)
    runner = CliRunner()
    app = _app()
    common = ["--config", str(config_dir), "--ledger", ledger_url]
    result = runner.invoke(
        app, ["status", *common, "--aggregation", "delivery_direction", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (agg,) = data["aggregations"]
    assert {d["dc"] for d in agg["dcs"]} == set(config.fleet.dcs)
    assert all(d["counts"].get("missing", 0) >= 6 for d in agg["dcs"])
    table = runner.invoke(app, ["status", *common, "--aggregation", "delivery_direction"])
    assert table.exit_code == 0, table.output
    assert "dub1" in table.output and "nothing shipped by the deadline" in table.output
    queued = runner.invoke(
        app,
        [
            "backfill", *common, "--dc", "dub1", "--aggregation", "delivery_direction",
            "--from", "-8h", "--to", "-4h",
        ],
    )  # fmt: skip
    assert queued.exit_code == 0, queued.output
    assert "queued backfill #1: dub1 delivery_direction" in queued.output
