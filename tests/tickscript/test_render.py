"""Rendering every aggregation for every DC: lint-clean, round-trips, matches the golden files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.cli import app
from federation.config import load_config
from federation.errors import TickScriptError
from federation.tickscript import format, lint, parse
from federation.tickscript.render import (
    RenderLintError,
    context_for_script,
    render_all,
    tick_duration,
    tick_float,
    tick_string,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/golden/render"
runner = CliRunner()


def test_every_aggregation_and_detection_renders_for_every_dc_and_lints_clean() -> None:
    config = load_config(REPO)
    tasks = render_all(config)
    kinds = len(config.aggregations) + len(config.detections)
    assert len(tasks) == kinds * len(config.fleet.dcs)
    for task in tasks:
        ctx, _ = context_for_script(config, task.script, task.filename)
        assert ctx is not None
        assert lint(task.script, ctx, task.filename) == []
        assert task.script.startswith(
            f"// federation plan {task.plan.aggregation} dc={task.plan.dc} version={task.plan.version}\n"
        )


def test_branches_follow_the_look_back() -> None:
    for task in render_all(load_config(REPO), dc="lon1"):
        k = task.plan.lookback_windows
        assert task.script.count("batch\n") == k
        window = tick_duration(task.plan.window_ns)
        for i in range(k):
            assert f".offset({tick_duration(i * task.plan.window_ns)})" in task.script
        assert (
            task.script.count(f".period({window})") == k == task.script.count(f".every({window})")
        )
        assert task.script.count(".align()") == k
        assert task.plan.query in task.script


def test_windows_shorter_than_influxdbouts_flush_are_flushed_every_window(
    config_dir: Path,
) -> None:
    # influxDBOut flushes every 10 s by default: a 2 s window would reach the gateway after
    # its deadline (end + look-back + grace) and be backfilled although Kapacitor computed it.
    hourly = render_all(load_config(config_dir), dc="lon1")
    assert all(".flushInterval(" not in t.script for t in hourly)
    for name in ("delivery_latency", "delivery_direction"):
        path = config_dir / f"tickscripts/{name}.yaml"
        text = path.read_text().replace("window: 1h", "window: 2s")
        path.write_text(
            text.replace("lookback: 3h", "lookback: 6s").replace("lookback: 2h", "lookback: 4s")
        )
    for task in render_all(load_config(config_dir), dc="lon1"):
        if task.plan.aggregation not in ("delivery_latency", "delivery_direction"):
            continue  # the detections' hourly windows
        k = task.plan.lookback_windows
        assert task.script.count(".flushInterval(2s)") == k
        ctx, _ = context_for_script(load_config(config_dir), task.script, task.filename)
        assert ctx is not None and lint(task.script, ctx, task.filename) == []


def test_parser_round_trips_every_rendered_script() -> None:
    for task in render_all(load_config(REPO)):
        program = parse(task.script, task.filename)
        assert parse(format(program), task.filename) == program


def test_rendered_output_matches_golden_files() -> None:
    tasks = render_all(load_config(REPO))
    expected = {p.name for p in GOLDEN.iterdir()}
    produced = set()
    for task in tasks:
        for name, text in (
            (task.filename, task.script),
            (task.filename.replace(".tick", ".json"), task.spec_json()),
        ):
            produced.add(name)
            golden = GOLDEN / name
            assert golden.exists(), (
                f"{name} is new: run `federation render --out tests/golden/render`"
            )
            assert golden.read_text() == text, (
                f"{name} differs from its golden file; review the diff, then run "
                "`federation render --out tests/golden/render`"
            )
    assert produced == expected, f"stale golden files: {sorted(expected - produced)}"


def test_spec_carries_id_type_dbrps_and_version() -> None:
    task = render_all(load_config(REPO), dc="tor1", aggregation="delivery_latency")[0]
    spec = json.loads(task.spec_json())
    assert spec == {
        "id": "fed-delivery_latency-tor1",
        "type": "batch",
        "dbrps": [{"db": "mail", "rp": "raw"}],
        "version": task.plan.version,
        "script": "delivery_latency.tor1.tick",
    }


def test_a_template_that_selects_personal_data_is_refused(config_dir: Path) -> None:
    template = config_dir / "tickscripts/aggregation.tick.j2"
    template.write_text(
        template.read_text().replace(
            "|query({{ plan.query | tick_query }})",
            "|query({{ (plan.query | replace(' FROM', ', \"sender\" FROM')) | tick_query }})",
        )
    )
    with pytest.raises(RenderLintError) as info:
        render_all(load_config(config_dir))
    assert any(p.rule == "pii-key" for p in info.value.problems)


def test_a_template_with_undefined_variable_names_the_template(config_dir: Path) -> None:
    template = config_dir / "tickscripts/aggregation.tick.j2"
    template.write_text(template.read_text() + "{{ plan.no_such_thing }}\n")
    with pytest.raises(TickScriptError, match=r"tickscripts/aggregation\.tick\.j2"):
        render_all(load_config(config_dir))


def test_filters_escape_for_tickscript() -> None:
    assert tick_string("it's") == "'it\\'s'"
    assert (
        tick_float(95) == "95.0" and tick_float(0.01) == "0.01" and tick_float(1e-7) == "0.0000001"
    )
    assert tick_duration(90 * 60 * 10**9) == "90m"
    with pytest.raises(ValueError):
        tick_duration(5)  # TICKscript has no ns unit


def test_render_and_lint_commands(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["render", "--config", str(REPO), "--dc", "dub1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    scripts = sorted(tmp_path.glob("*.tick"))
    assert [p.name for p in scripts] == [
        "delivery_direction.dub1.tick",
        "delivery_latency.dub1.tick",
        "helos_per_sender.dub1.tick",
        "recipients_per_sender.dub1.tick",
        "senders_per_client_ip.dub1.tick",
    ]
    result = runner.invoke(app, ["lint", "--config", str(REPO), *map(str, scripts)])
    assert result.exit_code == 0, result.output
    assert "0 problem(s); checked against plan fed-delivery_latency-dub1" in result.output
    assert "0 problem(s); checked against detection fed-helos_per_sender-dub1" in result.output
    bad = tmp_path / "delivery_latency.dub1.tick"
    bad.write_text(bad.read_text().replace(".align()", "", 1))
    result = runner.invoke(app, ["lint", "--config", str(REPO), str(bad)])
    assert result.exit_code == 1
    assert "align" in result.output


HAND_WRITTEN = """dbrp "mail"."raw_30d"

var data = batch
    |query('SELECT "latency_ms", "customer"::tag, "sender" FROM "mail"."raw_30d"."delivery"')
        .period(1h)
        .every(1h)
        .align()
        .groupBy('client_ip')

data
    |count('latency_ms')
    |influxDBOut()
        .database('federation')
        .retentionPolicy('agg_400d')
        .measurement('hand_written')
"""


def test_lint_checks_a_hand_written_script_against_every_regions_personal_keys(
    tmp_path: Path,
) -> None:
    # Named for no plan and carrying no plan header: the personal keys come from the policies.
    script = tmp_path / "my-latency.tick"
    script.write_text(HAND_WRITTEN)
    result = runner.invoke(app, ["lint", "--config", str(REPO), str(script)])
    assert result.exit_code == 1, result.output
    assert (
        f"{script}:4:" in result.output
        and "personal-data key 'sender' is selected" in result.output
    )
    assert f"{script}:8:" in result.output
    assert "personal-data key 'client_ip' is grouped by" in result.output
    assert "checked against every region's personal-data keys" in result.output
    clean = tmp_path / "clean.tick"
    clean.write_text(
        HAND_WRITTEN.replace(', "sender"', "").replace("        .groupBy('client_ip')\n", "")
    )
    result = runner.invoke(app, ["lint", "--config", str(REPO), str(clean)])
    assert result.exit_code == 0, result.output


def test_lint_finds_the_plans_in_what_render_prints(tmp_path: Path) -> None:
    printed = runner.invoke(app, ["render", "--config", str(REPO), "--dc", "lon1"])
    assert printed.exit_code == 0, printed.output
    screen = tmp_path / "screen.tick"
    screen.write_text(printed.output)
    result = runner.invoke(app, ["lint", "--config", str(REPO), str(screen)])
    assert result.exit_code == 0, result.output
    assert "no plan found" not in result.output
    for name in ("delivery_direction", "delivery_latency"):
        assert (
            f"{screen} ({name}.lon1.tick): 0 problem(s); checked against plan fed-{name}-lon1"
            in result.output
        )
    # One task as printed (its separator line first) is held to its plan too, and a problem
    # is reported at its line in the file.
    one = runner.invoke(
        app, ["render", "--config", str(REPO), "--dc", "lon1", "--aggregation", "delivery_latency"]
    )
    source = one.output.replace(".align()", "", 1)
    screen.write_text(source)
    result = runner.invoke(app, ["lint", "--config", str(REPO), str(screen)])
    assert result.exit_code == 1
    assert "checked against plan fed-delivery_latency-lon1" in result.output
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "|query(" in text)
    assert f"{screen}:{line}:" in result.output
