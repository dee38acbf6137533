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


def test_status_draws_what_it_counts_and_says_why_a_window_is_open(
    config_dir: Path, ledger_url: str
) -> None:
    from federation.coordinator.ledger import WindowRow

    config = load_config(config_dir)
    now = time.time_ns()
    hour_now = now - now % HOUR
    with open_ledger(ledger_url) as ledger:
        # A fresh coordinator: tracking starts now, but the agent's look-back shipped two
        # earlier windows, and one window is shipped without a reason of its own.
        sync_desired(ledger, config, now, track_from_ns=hour_now - HOUR)
        with ledger.session(write=True) as session:
            for start, state in (
                (hour_now - 4 * HOUR, "verified"),
                (hour_now - 3 * HOUR, "verified"),
                (hour_now - HOUR, "shipped"),
            ):
                session.add(
                    WindowRow(
                        dc="dub1", aggregation="delivery_direction", start_ns=start,
                        state=state, updated_ns=now,
                    )
                )  # fmt: skip
    runner = CliRunner()
    common = ["--config", str(config_dir), "--ledger", ledger_url]
    result = runner.invoke(
        _app(),
        ["status", *common, "--aggregation", "delivery_direction", "--dc", "dub1", "-f", "json"],
    )
    assert result.exit_code == 0, result.output
    (dub1,) = json.loads(result.output)["aggregations"][0]["dcs"]
    assert dub1["counts"]["verified"] == 2
    assert dub1["cells"].count("verified") == 2
    (shipped,) = [p for p in dub1["problems"] if p["state"] == "shipped"]
    assert shipped["reason"].startswith("manifest received")
    table = runner.invoke(_app(), ["status", *common, "--aggregation", "delivery_direction"])
    assert "shipped: manifest received" in table.output
    assert "shipped: \n" not in table.output


def test_status_of_an_unknown_dc_is_refused(config_dir: Path, ledger_url: str) -> None:
    from federation.errors import InvalidInput

    with open_ledger(ledger_url) as ledger:
        sync_desired(ledger, load_config(config_dir), time.time_ns())
    result = CliRunner().invoke(
        _app(), ["status", "--config", str(config_dir), "--ledger", ledger_url, "--dc", "xxx"]
    )
    assert isinstance(result.exception, InvalidInput)
    assert str(result.exception).startswith("--dc: unknown DC 'xxx' (known: dub1, fra1")


def test_a_ledger_that_is_missing_or_behind_is_one_line_and_never_created(
    config_dir: Path, tmp_path: Path
) -> None:
    import sqlite3

    from federation.cli import app
    from federation.coordinator.ledger import LedgerError

    typo = tmp_path / "typo.sqlite"
    behind = tmp_path / "behind.sqlite"
    sqlite3.connect(behind).close()  # a database, but no table of the ledger in it
    runner = CliRunner()
    for path, expected in ((typo, "does not exist"), (behind, "is at revision none (empty)")):
        url = f"sqlite:///{path}"
        for args in (
            ["status", "--ledger", url],
            ["report", "percentiles", "-a", "delivery_latency", "--from", "2026-11-28",
             "--ledger-url", url],
        ):  # fmt: skip
            result = runner.invoke(app, [*args, "--config", str(config_dir)])
            assert isinstance(result.exception, LedgerError), result.output
            message = str(result.exception)
            assert len(message.splitlines()) == 1 and expected in message
            assert "SQL" not in message
    assert not typo.exists()


def test_status_shows_each_detections_windows_and_findings(
    config_dir: Path, ledger_url: str
) -> None:
    from federation.coordinator.ledger import WindowRow

    config = load_config(config_dir)
    now = time.time_ns()
    hour_now = now - now % HOUR
    with open_ledger(ledger_url) as ledger:
        sync_desired(ledger, config, now, track_from_ns=hour_now - 3 * HOUR)
        with ledger.session(write=True) as session:
            for start, findings in ((hour_now - 3 * HOUR, 2), (hour_now - 2 * HOUR, 1)):
                session.add(
                    WindowRow(
                        dc="dub1", aggregation="recipients_per_sender", start_ns=start,
                        state="verified", findings=findings, updated_ns=now,
                    )
                )  # fmt: skip
    runner = CliRunner()
    common = ["--config", str(config_dir), "--ledger", ledger_url]
    result = runner.invoke(_app(), ["status", *common, "-f", "json"])
    assert result.exit_code == 0, result.output
    grids = {a["aggregation"]: a for a in json.loads(result.output)["aggregations"]}
    assert set(grids) == {*config.aggregations, *config.detections}
    detection = grids["recipients_per_sender"]
    assert detection["kind"] == "detection"
    findings = {d["dc"]: d["findings"] for d in detection["dcs"]}
    assert findings["dub1"] == 3 and findings["fra1"] == 0
    assert {d["findings"] for d in grids["delivery_latency"]["dcs"]} == {None}
    table = runner.invoke(
        _app(), ["status", *common, "--aggregation", "recipients_per_sender", "--dc", "dub1"]
    )
    assert table.exit_code == 0, table.output
    assert "detection: central holds counts" in table.output
    assert "findings" in table.output and "verified 2" in table.output
