"""AggregationPlan resolution, version stability and serialisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.config import load_config
from federation.config.resolve import resolve_all, resolve_plan
from federation.core.plan import plan_from_dict, plan_to_dict
from federation.errors import InvalidInput

REPO = Path(__file__).resolve().parent.parent


def test_query_reads_only_value_and_exported_dimensions() -> None:
    config = load_config(REPO)
    plan = resolve_plan(config, "delivery_latency", "dub1")
    assert plan.query == (
        'SELECT "latency_ms", "direction"::tag, "mailer"::tag, "customer"::tag '
        'FROM "mail"."raw"."delivery"'
    )
    for key in plan.personal_keys:
        assert key not in plan.query
    assert "time" not in plan.query and "GROUP BY" not in plan.query
    assert plan.query_between(10, 20).endswith("WHERE time >= 10 AND time < 20")


def test_schema_and_naming_rules() -> None:
    plan = resolve_plan(load_config(REPO), "delivery_latency", "lon1")
    schema = plan.summary_schema
    assert schema.measurement == "delivery_latency"
    assert schema.tags == ("dc", "direction", "mailer", "customer")
    assert schema.fields["count"] == "integer" and schema.fields["sketch"] == "string"
    assert {"p50", "p90", "p95", "p99", "p99_9"} <= set(schema.fields)
    assert plan.manifest_schema.fields["run"] == "integer"
    assert plan.task_id == "fed-delivery_latency-lon1"
    assert plan.lookback_windows == 3


def test_min_group_events_is_the_stricter_of_region_and_aggregation() -> None:
    config = load_config(REPO)
    assert resolve_plan(config, "delivery_direction", "tor1").min_group_events == 3
    assert resolve_plan(config, "delivery_latency", "tor1").min_group_events == 5


def test_dimension_not_exportable_in_a_region_is_dropped(config_dir: Path) -> None:
    path = config_dir / "policies/na.yaml"
    path.write_text(
        path.read_text().replace("[direction, mailer, customer]", "[direction, mailer]")
    )
    config = load_config(config_dir)
    plan = resolve_plan(config, "delivery_latency", "tor1")
    assert plan.dimensions == ("direction", "mailer")
    assert plan.dropped_dimensions == ("customer",)
    assert "customer" not in plan.query


def test_round_trip_through_json() -> None:
    for plan in resolve_all(load_config(REPO)):
        assert plan_from_dict(plan_to_dict(plan)) == plan


def test_tampered_plan_is_refused() -> None:
    data = plan_to_dict(resolve_plan(load_config(REPO), "delivery_latency", "dub1"))
    data["dimensions"] = ["direction", "mailer", "customer", "sender"]
    with pytest.raises(InvalidInput, match="does not match its content"):
        plan_from_dict(data)


def _version_with(config_dir: Path, edit: dict[str, object]) -> str:
    path = config_dir / "tickscripts/delivery_latency.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(edit)
    path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=True, width=40))
    return resolve_plan(load_config(config_dir), "delivery_latency", "dub1").version


def test_version_ignores_formatting(config_dir: Path) -> None:
    before = resolve_plan(load_config(config_dir), "delivery_latency", "dub1").version
    assert _version_with(config_dir, {}) == before
    assert _version_with(config_dir, {"description": "reworded", "lookback": "5h"}) == before


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(
        [
            {"accuracy": 0.02},
            {"percentiles": [50, 99]},
            {"dimensions": ["direction", "mailer"]},
            {"min_group_events": 10},
            {"window": "30m", "lookback": "90m"},
            {"source": {"measurement": "delivery", "field": "size", "unit": "bytes"}},
        ]
    )
)
def test_version_changes_with_any_output_affecting_edit(
    tmp_path_factory: pytest.TempPathFactory, edit: dict[str, object]
) -> None:
    import shutil

    target = tmp_path_factory.mktemp("cfg")
    for name in ("fleet.yaml",):
        shutil.copy(REPO / name, target / name)
    shutil.copytree(REPO / "policies", target / "policies")
    shutil.copytree(REPO / "tickscripts", target / "tickscripts")
    before = resolve_plan(load_config(target), "delivery_latency", "dub1").version
    assert _version_with(target, edit) != before
