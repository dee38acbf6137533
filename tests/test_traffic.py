"""The demo traffic's security incidents: each stands out to its detection, and only it."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.config import load_config
from federation.config.resolve import resolve_detection
from federation.core.detect import detect_window
from federation.devstack.traffic import (
    COMPROMISED_SENDER,
    SPAM_RANGE,
    Incident,
    generate_events,
    incident_events,
)

REPO = Path(__file__).resolve().parent.parent
HOUR = 3_600 * 10**9
START = 1_800_000_000 * 10**9 // HOUR * HOUR


def findings(detection: str, events: list[dict[str, object]]) -> set[str]:
    plan = resolve_detection(load_config(REPO), detection, "dub1")
    keys = [str(e[plan.key]) for e in events]
    values = [str(e[plan.distinct]) for e in events] if plan.distinct else None
    return {f.key for f in detect_window(plan, START, keys, values).findings}


@pytest.mark.parametrize("per_hour", [1_500, 20_000])
def test_a_compromised_account_and_a_spam_wave_are_found_and_nothing_else(per_hour: int) -> None:
    ordinary = generate_events("dub1", START, START + HOUR, per_hour, seed=3)
    for detection in ("recipients_per_sender", "senders_per_client_ip", "helos_per_sender"):
        assert findings(detection, ordinary) == set(), detection

    account = incident_events("dub1", Incident("compromised_account", START, 2_400))
    assert {e["sender"] for e in account} == {COMPROMISED_SENDER}
    assert len({e["recipient"] for e in account}) == 2_400
    with_account = ordinary + account
    assert findings("recipients_per_sender", with_account) == {COMPROMISED_SENDER}
    # Sent from hosts all over the DC's client range: many HELO names behind one sender.
    assert findings("helos_per_sender", with_account) == {COMPROMISED_SENDER}
    assert findings("senders_per_client_ip", with_account) == set()

    wave = incident_events("dub1", Incident("spam_wave", START, max(600, per_hour // 10)))
    with_wave = ordinary + wave
    spam_ips = {f"{SPAM_RANGE}.{n}" for n in (23, 24, 25)}
    assert findings("senders_per_client_ip", with_wave) == spam_ips
    assert findings("recipients_per_sender", with_wave) == set()
    assert all(START // 10**6 <= int(str(e["ts"])) < (START + HOUR) // 10**6 for e in wave)
