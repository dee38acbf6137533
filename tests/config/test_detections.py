"""Detections are validated against every region's policy, each problem named where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_validate import edit, problems


def test_a_detection_keyed_by_an_exportable_dimension_is_refused(config_dir: Path) -> None:
    edit(config_dir / "tickscripts/senders_per_client_ip.yaml", "per: client_ip", "per: mailer")
    found = problems(config_dir)
    assert any(
        p.startswith("tickscripts/senders_per_client_ip.yaml:7: per: 'mailer' is not personal")
        and "region eu" in p
        for p in found
    ), found


def test_a_key_personal_in_one_region_only_is_refused_for_the_other(config_dir: Path) -> None:
    edit(config_dir / "policies/na.yaml", "client_ip, ", "")
    found = problems(config_dir)
    assert any("senders_per_client_ip" in p and "region na" in p for p in found), found
    assert not any("senders_per_client_ip" in p and "region eu" in p for p in found), found


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("at_least: 50\n", "at_least: 1\n", "threshold.at_least"),
        ("factor_over_median: 10", "factor_over_median: 0.5", "threshold.factor_over_median"),
        ("window: 1h", "window: 7h", "window 7h must divide 24h"),
        ("lookback: 2h", "lookback: 90m", "must be a whole multiple of the window 1h"),
        ("distinct: sender", "distinct: client_ip", "counts distinct values of 'client_ip'"),
        ("kind: detection", "kind: detector", "kind"),
    ],
)
def test_an_insane_declaration_is_refused_where_it_is(
    config_dir: Path, old: str, new: str, path: str
) -> None:
    edit(config_dir / "tickscripts/senders_per_client_ip.yaml", old, new)
    found = problems(config_dir)
    assert any(
        p.startswith("tickscripts/senders_per_client_ip.yaml:") and path in p for p in found
    ), found


def test_a_detection_may_not_take_an_aggregations_name(config_dir: Path) -> None:
    edit(
        config_dir / "tickscripts/helos_per_sender.yaml",
        "name: helos_per_sender",
        "name: delivery_latency",
    )
    found = problems(config_dir)
    assert any(
        "tickscripts/helos_per_sender.yaml:" in p and "also declared in" in p for p in found
    ), found
