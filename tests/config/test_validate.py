"""`federation validate` on the example federation and on each kind of bad config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.cli import app
from federation.config import load_config
from federation.errors import ConfigProblems

runner = CliRunner()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def problems(config_dir: Path) -> list[str]:
    with pytest.raises(ConfigProblems) as info:
        load_config(config_dir)
    return [str(p) for p in info.value.problems]


def test_example_federation_is_valid() -> None:
    config = load_config(Path(__file__).parents[2])
    assert set(config.fleet.regions) == {"eu", "uk", "na"}
    assert len(config.fleet.dcs) >= 5
    assert {"delivery_latency", "delivery_direction"} <= set(config.aggregations)


def test_validate_command_prints_summary(config_dir: Path) -> None:
    result = runner.invoke(app, ["validate", "--config", str(config_dir)])
    assert result.exit_code == 0, result.output
    assert "config OK" in result.output
    assert re.search(r"delivery_latency\s+dub1\s+version [0-9a-f]{12}", result.output)


def test_unknown_key(config_dir: Path) -> None:
    edit(
        config_dir / "policies/eu.yaml",
        "  shard_duration: 1d\n",
        "  shard_duration: 1d\n  shards: 3\n",
    )
    assert any(
        p.startswith("policies/eu.yaml:11: raw.shards: unknown key") for p in problems(config_dir)
    )


def test_malformed_duration(config_dir: Path) -> None:
    edit(config_dir / "tickscripts/delivery_latency.yaml", "window: 1h", "window: 1h30m")
    found = problems(config_dir)
    assert any(
        "tickscripts/delivery_latency.yaml:" in p and ": window: " in p and "not a duration" in p
        for p in found
    ), found


def test_retention_above_region_maximum(config_dir: Path) -> None:
    edit(config_dir / "policies/eu.yaml", "  retention: 30d", "  retention: 60d")
    found = problems(config_dir)
    assert any(
        p.startswith("policies/eu.yaml:")
        and ": raw: " in p
        and "longer than the region's maximum 32d" in p
        for p in found
    ), found


def test_worst_case_lifetime_must_fit_the_maximum(config_dir: Path) -> None:
    # 31d + 1d shard + 30m check interval outlives the 32d maximum although 31d < 32d.
    edit(config_dir / "policies/eu.yaml", "  retention: 30d", "  retention: 31d")
    found = problems(config_dir)
    assert any(
        p.startswith("policies/eu.yaml:")
        and ": raw: " in p
        and "declare a retention of at most 30d" in p
        for p in found
    ), found


def test_a_raw_rp_name_may_not_state_another_duration_than_its_retention(
    config_dir: Path,
) -> None:
    # A name with the declared duration is true (an existing deployment may keep it)...
    edit(config_dir / "policies/eu.yaml", "retention_policy: raw", "retention_policy: raw_30d")
    load_config(config_dir)
    # ...until the retention changes: then it would lie, and the config is refused.
    edit(config_dir / "policies/eu.yaml", "  retention: 30d", "  retention: 25d")
    found = problems(config_dir)
    assert any(
        p.startswith("policies/eu.yaml:")
        and ": raw: " in p
        and "retention_policy raw_30d states 30d but the retention is 25d" in p
        and "name the raw RP without a duration (e.g. raw)" in p
        for p in found
    ), found


def test_the_example_raw_rps_carry_no_duration_in_their_names() -> None:
    config = load_config(Path(__file__).resolve().parents[2])
    assert {p.raw.retention_policy for p in config.policies.values()} == {"raw"}


def test_exported_dimension_that_is_personal(config_dir: Path) -> None:
    edit(
        config_dir / "policies/uk.yaml",
        "exportable_dimensions: [direction, mailer, customer]",
        "exportable_dimensions: [direction, mailer, customer, client_ip]",
    )
    found = problems(config_dir)
    assert any(
        "policies/uk.yaml:" in p
        and "measurements.delivery.exportable_dimensions.3" in p
        and "personal data" in p
        for p in found
    ), found


def test_aggregation_dimension_that_is_personal(config_dir: Path) -> None:
    edit(
        config_dir / "tickscripts/delivery_direction.yaml",
        "dimensions: [direction]",
        "dimensions: [direction, sender]",
    )
    found = problems(config_dir)
    assert any(
        "tickscripts/delivery_direction.yaml:" in p and "dimensions.1" in p and "personal data" in p
        for p in found
    ), found


def test_dc_in_unknown_region(config_dir: Path) -> None:
    edit(config_dir / "fleet.yaml", "    region: na\n", "    region: apac\n")
    found = problems(config_dir)
    assert any(
        p.startswith("fleet.yaml:") and "dcs.tor1.region" in p and "unknown region 'apac'" in p
        for p in found
    ), found


def test_duplicate_dc(config_dir: Path) -> None:
    text = (config_dir / "fleet.yaml").read_text()
    text = text.replace("  van1:\n", "  tor1:\n", 1)
    (config_dir / "fleet.yaml").write_text(text)
    found = problems(config_dir)
    assert any(
        p.startswith("fleet.yaml:") and "dcs.tor1: duplicate key 'tor1'" in p for p in found
    ), found


def test_window_must_divide_a_day(config_dir: Path) -> None:
    path = config_dir / "tickscripts/delivery_direction.yaml"
    edit(path, "window: 1h", "window: 7h")
    edit(path, "lookback: 2h", "lookback: 14h")
    found = problems(config_dir)
    assert any(
        "tickscripts/delivery_direction.yaml" in p and "window 7h must divide 24h" in p
        for p in found
    ), found


def test_lookback_multiple_of_window(config_dir: Path) -> None:
    edit(config_dir / "tickscripts/delivery_latency.yaml", "lookback: 3h", "lookback: 150m")
    found = problems(config_dir)
    assert any("lookback 150m must be a whole multiple of the window 1h" in p for p in found), found


@pytest.mark.parametrize("value", ["0", "100", "-5", "120"])
def test_percentile_outside_open_interval(config_dir: Path, value: str) -> None:
    edit(
        config_dir / "tickscripts/delivery_latency.yaml",
        "percentiles: [50,",
        f"percentiles: [{value},",
    )
    found = problems(config_dir)
    assert any(
        "tickscripts/delivery_latency.yaml:" in p
        and "percentiles.0" in p
        and "strictly between 0 and 100" in p
        for p in found
    ), found


def test_aggregation_min_group_events_below_region(config_dir: Path) -> None:
    edit(
        config_dir / "tickscripts/delivery_latency.yaml",
        "min_group_events: 5",
        "min_group_events: 4",
    )
    found = problems(config_dir)
    # EU and UK ask for 5; NA asks for 3, so only two regions object.
    hits = [p for p in found if ": min_group_events: 4 is below the minimum group size 5" in p]
    assert {re.search(r"region (\w+)", p).group(1) for p in hits} == {"eu", "uk"}, found  # type: ignore[union-attr]


def test_missing_template_file(config_dir: Path) -> None:
    edit(
        config_dir / "tickscripts/delivery_direction.yaml",
        "template: aggregation.tick.j2",
        "template: coarse.tick.j2",
    )
    found = problems(config_dir)
    assert any(
        "tickscripts/delivery_direction.yaml:" in p
        and ": template: template file tickscripts/coarse.tick.j2 does not exist" in p
        for p in found
    ), found


def test_inline_credential_refused(config_dir: Path) -> None:
    edit(
        config_dir / "fleet.yaml",
        "      password_env: FEDERATION_DUB1_INFLUX_PASSWORD",
        "      password: hunter2",
    )
    found = problems(config_dir)
    assert any(
        "dcs.dub1.influxdb" in p and "secrets are never written in config" in p for p in found
    ), found
    assert not any("hunter2" in p for p in found)


def test_inline_secret_in_env_name_refused(config_dir: Path) -> None:
    edit(config_dir / "fleet.yaml", "FEDERATION_FRA1_AGENT_TOKEN", "s3cr3t-t0ken!")
    found = problems(config_dir)
    assert any(
        "dcs.fra1.agent_token_env" in p and "looks like a secret written inline" in p for p in found
    ), found


def test_yaml_syntax_error_names_line(config_dir: Path) -> None:
    edit(config_dir / "policies/na.yaml", "min_group_events: 3", "min_group_events: [3")
    found = problems(config_dir)
    assert any(re.match(r"policies/na.yaml:\d+: YAML syntax error", p) for p in found), found


def test_every_problem_is_reported_not_just_the_first(config_dir: Path) -> None:
    edit(config_dir / "tickscripts/delivery_latency.yaml", "lookback: 3h", "lookback: 150m")
    edit(config_dir / "fleet.yaml", "    region: na\n", "    region: apac\n")
    edit(config_dir / "policies/eu.yaml", "  retention: 30d", "  retention: 60d")
    assert len(problems(config_dir)) >= 3


def test_validate_command_exits_2_listing_problems(config_dir: Path) -> None:
    edit(config_dir / "tickscripts/delivery_latency.yaml", "lookback: 3h", "lookback: 150m")
    edit(config_dir / "fleet.yaml", "    region: na\n", "    region: apac\n")
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", "validate", "--config", str(config_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "error: 2 problems:" in result.stderr
    assert "fleet.yaml:" in result.stderr and "tickscripts/delivery_latency.yaml:" in result.stderr


def validate(config_dir: Path) -> list[str]:
    from federation.config.validate import validate_config

    with pytest.raises(ConfigProblems) as info:
        validate_config(config_dir)
    return [str(p) for p in info.value.problems]


def test_validate_refuses_a_schema_with_a_personal_key_as_a_tag(config_dir: Path) -> None:
    schema = config_dir / "policies/schemas/delivery.yaml"
    edit(schema, "  sender: {type: string}    # personal data\n", "")
    edit(schema, "  customer: {required: true}\n", "  customer: {required: true}\n  sender: {}\n")
    line = schema.read_text().splitlines().index("  sender: {}") + 1
    found = validate(config_dir)
    # Personal in every region: said once per region's policy, each with file, key and line.
    assert found and all(
        p.startswith(f"policies/schemas/delivery.yaml:{line}: tags.sender: 'sender' is personal")
        for p in found
    ), found
    result = runner.invoke(app, ["validate", "--config", str(config_dir)])
    assert isinstance(result.exception, ConfigProblems) and "config OK" not in result.output
    assert result.exception.exit_code == 2


def test_validate_refuses_a_schema_that_is_not_yaml(config_dir: Path) -> None:
    (config_dir / "policies/schemas/bounce.yaml").write_text("measurement: bounce\ntags: [\n")
    found = validate(config_dir)
    assert len(found) == 1 and re.match(
        r"policies/schemas/bounce.yaml:\d+: YAML syntax error", found[0]
    ), found
