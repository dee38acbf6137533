"""Resolving a plan names where its declaration breaks the region's policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.config import load_config
from federation.config.resolve import resolve_detection, resolve_plan
from federation.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
UNDECLARED = "'nope' is not declared in policies/eu.yaml"


def test_a_source_measurement_the_policy_does_not_declare_is_refused_where_it_is() -> None:
    """The loader refuses such a config as a whole; an aggregation or a detection resolved
    from a declaration of its own is refused at its `source.measurement`, alike."""
    config = load_config(REPO)
    agg = config.aggregations["delivery_latency"]
    det = config.detections["senders_per_client_ip"]
    nope = {"measurement": "nope"}
    with pytest.raises(ConfigError) as refused:
        resolve_plan(
            config, agg.model_copy(update={"source": agg.source.model_copy(update=nope)}), "dub1"
        )
    assert str(refused.value) == (
        f"tickscripts/delivery_latency.yaml: source.measurement: {UNDECLARED}"
    )
    with pytest.raises(ConfigError) as refused:
        resolve_detection(
            config, det.model_copy(update={"source": det.source.model_copy(update=nope)}), "dub1"
        )
    assert str(refused.value) == (
        f"tickscripts/senders_per_client_ip.yaml: source.measurement: {UNDECLARED}"
    )
