"""Detections in the catalog: declaration, validation against each region's policy, the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.config import load_config
from federation.config.resolve import resolve_detection, resolve_detections
from federation.core.detection_plan import detection_plan_from_dict, detection_plan_to_dict
from federation.errors import InvalidInput

REPO = Path(__file__).resolve().parents[1]


def test_the_three_examples_load_as_detections_not_aggregations() -> None:
    config = load_config(REPO)
    assert set(config.detections) == {
        "recipients_per_sender",
        "senders_per_client_ip",
        "helos_per_sender",
    }
    assert not set(config.detections) & set(config.aggregations)
    compromised = config.detections["recipients_per_sender"]
    assert (compromised.per, compromised.distinct) == ("sender", "recipient")
    assert compromised.threshold.at_least == 500
    assert compromised.threshold.factor_over_median == 20


def test_the_plan_reads_only_its_two_keys_as_fields_and_ships_only_dc() -> None:
    plan = resolve_detection(load_config(REPO), "senders_per_client_ip", "dub1")
    assert plan.query == 'SELECT "client_ip"::field, "sender"::field FROM "mail"."raw"."delivery"'
    assert plan.count_schema.tags == ("dc",)
    assert set(plan.count_schema.fields) == {"count", "keys", "findings"}
    assert plan.task_id == "fed-senders_per_client_ip-dub1"
    assert plan.lookback_windows == 2
    assert (plan.database, plan.retention_policy) == ("mail", "raw")


def test_a_plan_survives_the_wire_and_a_tampered_one_does_not() -> None:
    plan = resolve_detection(load_config(REPO), "recipients_per_sender", "tor1")
    data = detection_plan_to_dict(plan)
    assert detection_plan_from_dict(data) == plan
    data["at_least"] = 5
    with pytest.raises(InvalidInput, match="does not match its content"):
        detection_plan_from_dict(data)


def test_the_version_follows_the_threshold_not_the_dc() -> None:
    config = load_config(REPO)
    dub1, tor1 = (resolve_detection(config, "helos_per_sender", dc) for dc in ("dub1", "tor1"))
    assert dub1.version == tor1.version
    assert len(resolve_detections(config)) == 3 * len(config.fleet.dcs)


def test_validate_lists_each_detection_per_dc_as_local(config_dir: Path) -> None:
    from typer.testing import CliRunner

    from federation.cli import app

    result = CliRunner().invoke(app, ["validate", "--config", str(config_dir)])
    assert result.exit_code == 0, result.output
    assert "detections (3), local to each DC (findings never leave it):" in result.output
    assert "distinct recipient per sender >= 500 and >= 20x the median" in result.output
