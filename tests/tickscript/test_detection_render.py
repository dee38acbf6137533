"""Detection scripts: rendered from the plan, and refused when anything but counts would leave."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.cli import app
from federation.config import load_config
from federation.config.resolve import resolve_detection, resolve_detections
from federation.tickscript.lint import lint
from federation.tickscript.render import (
    RenderLintError,
    detection_lint_context,
    render_detection,
)

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "tickscripts" / "detection.tick.j2").read_text()
runner = CliRunner()
COUNTS_OUT = """    |influxDBOut()
        .cluster({{ gateway_cluster | tick_string }})"""


def test_every_detection_renders_for_every_dc_and_lints_clean() -> None:
    config = load_config(REPO)
    for plan in resolve_detections(config):
        task = render_detection(plan, config.templates_dir)
        assert task.script.startswith(
            f"// federation plan {plan.detection} dc={plan.dc} version={plan.version}\n"
        )
        assert task.script.count("@fedagg()") == plan.lookback_windows  # one UDF per branch
        assert task.script.count(".mode('split')") == plan.lookback_windows
        assert task.script.count(".cluster('federation_gateway')") == plan.lookback_windows
        assert task.id == f"fed-{plan.detection}-{plan.dc}"


HOSTILE = {
    # The findings (with key values) sent to the gateway instead of the DC's own InfluxDB.
    "findings-to-gateway": (
        "{% if route == route_local %}",
        "{% if route == 'nothing' %}",
    ),
    # Everything the UDF emits but the counts let through to the gateway.
    "where-inverted": (
        "|where(lambda: {{ route_tag | tick_reference }} == {{ route | tick_string }})",
        "|where(lambda: {{ route_tag | tick_reference }} != {{ route | tick_string }})",
    ),
    # The UDF's points to the gateway unsorted.
    "no-where": (
        "    |where(lambda: {{ route_tag | tick_reference }} == {{ route | tick_string }})\n",
        "",
    ),
    # The raw query written straight to the gateway cluster, beside the UDF.
    "raw-to-gateway": (
        "{% endfor %}\n{% endfor %}",
        "{% endfor %}\nwindow{{ k }}\n" + COUNTS_OUT
        + "\n        .database('federation')\n        .retentionPolicy('agg_400d')\n"
        "{% endfor %}",
    ),
    # A key value smuggled as a tag on the counts.
    "key-as-tag": (
        "        .tag('dc', {{ plan.dc | tick_string }})",
        "        .tag('dc', {{ plan.dc | tick_string }})\n        .tag('sender', 'x')",
    ),
    # A node between the counts and the gateway that could add anything.
    "eval-before-gateway": (
        "{% else %}\n    |influxDBOut()",
        "{% else %}\n    |eval(lambda: \"key\").as('k')\n    |influxDBOut()",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_detection_template_is_refused(tmp_path: Path, name: str) -> None:
    old, new = HOSTILE[name]
    assert old in GOOD, old
    (tmp_path / "detection.tick.j2").write_text(GOOD.replace(old, new, 1))
    plan = resolve_detection(load_config(REPO), "recipients_per_sender", "dub1")
    with pytest.raises(RenderLintError) as info:
        render_detection(plan, tmp_path)
    rules = {p.rule for p in info.value.problems}
    assert "detection-gateway" in rules, info.value.problems


def test_an_output_cluster_that_is_not_a_constant_is_refused() -> None:
    plan = resolve_detection(load_config(REPO), "helos_per_sender", "lon1")
    script = render_detection(plan, REPO / "tickscripts").script
    hostile = "var where string\n" + script.replace(
        ".cluster('federation_gateway')", ".cluster(where)", 1
    )
    problems = lint(hostile, detection_lint_context(plan, "federation_gateway"))
    assert [p.rule for p in problems] == ["detection-gateway"], problems


def test_a_short_window_flushes_both_outputs_every_window() -> None:
    plan = resolve_detection(load_config(REPO), "recipients_per_sender", "dub1")
    short = dataclasses.replace(plan, window_ns=2 * 10**9, lookback_ns=4 * 10**9)
    script = render_detection(short, REPO / "tickscripts").script
    # Two branches, each with a local and a gateway output: all four flush every 2 s.
    assert script.count("|influxDBOut()") == 4 == script.count(".flushInterval(2s)")
    assert ".flushInterval(" not in render_detection(plan, REPO / "tickscripts").script


def test_lint_holds_a_rendered_detection_to_its_plan_and_refuses_a_hostile_one(
    tmp_path: Path,
) -> None:
    plan = resolve_detection(load_config(REPO), "senders_per_client_ip", "fra1")
    good = render_detection(plan, REPO / "tickscripts").script
    (tmp_path / "good.tick").write_text(good)
    # A key value sent to the gateway cluster as a tag on the counts.
    hostile = good.replace(
        ".tag('dc', 'fra1')", ".tag('dc', 'fra1')\n        .tag('ip', '192.0.2.1')", 1
    )
    (tmp_path / "hostile.tick").write_text(hostile)
    result = runner.invoke(app, ["lint", str(tmp_path / "good.tick"), "--config", str(REPO)])
    assert result.exit_code == 0, result.output
    assert f"checked against detection {plan.task_id}" in result.output
    result = runner.invoke(app, ["lint", str(tmp_path / "hostile.tick"), "--config", str(REPO)])
    assert result.exit_code == 1
    assert "detection-gateway: a detection's output to the gateway carries no tag but 'dc'" in (
        result.output
    )
