"""Synthetic but realistic mail delivery traffic, for the demo, the scenarios and the benches.

Each DC's events have lognormal latencies per mailer (one mailer is slow), a long tail of small
customers (so some groups fall under k-anonymity), one customer with a bad hour, a short
micro-outage in which deliveries time out, and personal data in every event: fake sender and
recipient addresses (under reserved example domains), client IPs from documentation ranges, and
HELO names. Everything is drawn from a seeded generator, so the same arguments give the same
events.

`incident_events` adds what the detections exist for (the case study's security analyses): a
compromised account — one sender suddenly mailing thousands of distinct recipients in one hour,
from many hosts — or a spam wave — a few client IPs of one range each sending as many distinct
senders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

_DOMAINS = ("example.org", "example.com", "example.net")


@dataclass(frozen=True)
class TrafficProfile:
    """The shape of one DC's traffic."""

    mailers: tuple[str, ...] = ("mx1", "mx2", "mx3", "mx4")
    slow_mailer: str = "mx3"
    customers: int = 120
    bad_customer: str = "c0007"
    median_ms: float = 180.0
    slow_median_ms: float = 650.0
    sigma: float = 0.7
    inbound_share: float = 0.6
    outage_share: float = 0.002
    """The micro-outage's length as a share of the range; deliveries in it time out (30-60 s)."""


@dataclass(frozen=True)
class Anomalies:
    """Where the profile's anomalies fall inside a generated range (ns since the epoch)."""

    bad_hour: tuple[int, int]
    outage: tuple[int, int]


def anomalies(start_ns: int, end_ns: int, profile: TrafficProfile = TrafficProfile()) -> Anomalies:
    """The bad customer's bad stretch (a twelfth of the range, two thirds in) and the outage."""
    span = end_ns - start_ns
    bad_start = start_ns + span * 2 // 3
    outage_start = start_ns + span // 3
    return Anomalies(
        (bad_start, bad_start + span // 12),
        (outage_start, outage_start + max(int(span * profile.outage_share), 1)),
    )


def generate_events(
    dc: str,
    start_ns: int,
    end_ns: int,
    count: int,
    *,
    seed: int = 0,
    profile: TrafficProfile = TrafficProfile(),
) -> list[dict[str, object]]:
    """`count` delivery events with timestamps in [start_ns, end_ns), sorted by time.

    Timestamps are epoch milliseconds under key `ts` (the example ingest schema); the
    personal-data fields are filled in every event.
    """
    rng = np.random.default_rng([seed, sum(dc.encode())])
    times = np.sort(rng.integers(start_ns, end_ns, count)) // 1_000_000
    mailers = rng.choice(len(profile.mailers), count)
    # A long tail: customer k is chosen with weight 1/(k+1), so many customers are small.
    weights = 1.0 / np.arange(1, profile.customers + 1)
    customers = rng.choice(profile.customers, count, p=weights / weights.sum())
    inbound = rng.random(count) < profile.inbound_share
    medians = np.where(
        np.array(profile.mailers)[mailers] == profile.slow_mailer,
        profile.slow_median_ms,
        profile.median_ms,
    )
    latency = rng.lognormal(np.log(medians), profile.sigma)
    marks = anomalies(start_ns, end_ns, profile)
    t_ns = times * 1_000_000
    bad = (
        (customers == int(profile.bad_customer[1:]))
        & (t_ns >= marks.bad_hour[0])
        & (t_ns < marks.bad_hour[1])
    )
    latency = np.where(bad, latency * 12, latency)
    down = (t_ns >= marks.outage[0]) & (t_ns < marks.outage[1])
    latency = np.where(down, rng.uniform(30_000, 60_000, count), latency)
    sizes = rng.lognormal(10, 1.2, count).astype(np.int64)
    users = rng.integers(0, 50_000, (count, 2))
    ips = rng.integers(1, 255, count)
    events: list[dict[str, object]] = []
    for i in range(count):
        direction = "inbound" if inbound[i] else "outbound"
        events.append(
            {
                "ts": int(times[i]),
                "direction": direction,
                "mailer": profile.mailers[mailers[i]],
                "customer": f"c{customers[i]:04d}",
                "latency_ms": round(float(latency[i]), 3),
                "size": int(sizes[i]),
                "status": "deferred" if down[i] else "delivered",
                "sender": f"user{users[i, 0]}@{_DOMAINS[users[i, 0] % 3]}",
                "recipient": f"user{users[i, 1]}@{dc}.{_DOMAINS[users[i, 1] % 3]}",
                "client_ip": f"192.0.2.{ips[i]}" if i % 4 else f"2001:db8::{ips[i]:x}",
                "helo": f"mail{ips[i]}.{_DOMAINS[ips[i] % 3]}",
            }
        )
    return events


COMPROMISED_SENDER = "user4711@example.org"
"""The compromised account (never drawn by `generate_events`, whose user 4711 is at
example.com)."""
SPAM_RANGE = "198.51.100"
"""The spam wave's client range (TEST-NET-2: never drawn by `generate_events`)."""


@dataclass(frozen=True)
class Incident:
    """Traffic a detection should find, in the hour starting at `hour_ns`.

    `compromised_account`: `COMPROMISED_SENDER` mails `size` distinct recipients, from hosts
    all over the DC's usual client range (so with many HELO names too). `spam_wave`: each of
    `ips` client IPs of `SPAM_RANGE` sends as `size` distinct senders.
    """

    kind: Literal["compromised_account", "spam_wave"]
    hour_ns: int
    size: int
    ips: int = 3


def incident_events(
    dc: str, incident: Incident, *, seed: int = 0, profile: TrafficProfile = TrafficProfile()
) -> list[dict[str, object]]:
    """The incident's events (the same fields as `generate_events`' events), sorted by time."""
    spam = incident.kind == "spam_wave"
    count = incident.size * (incident.ips if spam else 1)
    rng = np.random.default_rng([seed, sum(dc.encode()), count])
    hour_ms = 3_600_000
    times = np.sort(rng.integers(0, hour_ms, count)) + incident.hour_ns // 1_000_000
    latency = rng.lognormal(np.log(profile.median_ms), profile.sigma, count)
    hosts = rng.integers(1, 255, count)
    events: list[dict[str, object]] = []
    for i in range(count):
        if spam:
            ip = f"{SPAM_RANGE}.{23 + i % incident.ips}"
            sender = f"offer{i // incident.ips}@{_DOMAINS[i % 3]}"
            recipient = f"user{rng.integers(0, 50_000)}@{dc}.{_DOMAINS[i % 3]}"
            helo = f"bulk{23 + i % incident.ips}.{_DOMAINS[2]}"
        else:
            ip = f"192.0.2.{hosts[i]}"
            sender = COMPROMISED_SENDER
            recipient = f"victim{i}@{_DOMAINS[(i + 1) % 3]}"
            helo = f"mail{hosts[i]}.{_DOMAINS[hosts[i] % 3]}"
        events.append(
            {
                "ts": int(times[i]),
                "direction": "inbound" if spam else "outbound",
                "mailer": profile.mailers[i % len(profile.mailers)],
                "customer": "c0003",
                "latency_ms": round(float(latency[i]), 3),
                "size": 2_000,
                "status": "delivered",
                "sender": sender,
                "recipient": recipient,
                "client_ip": ip,
                "helo": helo,
            }
        )
    return events


def personal_values(events: Sequence[dict[str, object]], keys: Sequence[str]) -> set[str]:
    """Every personal-data value in `events` (to prove none of them reached central)."""
    return {str(e[k]) for e in events for k in keys if k in e}


def to_json_lines(events: Sequence[dict[str, object]]) -> bytes:
    """Events as JSON lines, as a mailer's event stream carries them."""
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events).encode()


def split_late(
    events: Sequence[dict[str, object]], share: float, *, seed: int = 0
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Split events into those that arrive on time and a `share` that arrives late."""
    rng = np.random.default_rng(seed)
    late_mask = rng.random(len(events)) < share
    on_time = [e for e, late in zip(events, late_mask, strict=True) if not late]
    late = [e for e, late in zip(events, late_mask, strict=True) if late]
    return on_time, late
