"""Bench: the embedded executor on one DC-hour of raw delivery events.

    python bench/executor.py                 # 10^5 events
    python bench/executor.py --million       # 10^5, then 10^6 events (about two minutes more)

For each size: writes the events (2 directions x 8 mailers x 2,000 customers, personal data as
fields sender, recipient, client_ip, helo) into a spawned influxd, then measures in the same run

- the executor: one window read with the plan's InfluxQL + computed with `window_points` +
  shipped to a spawned central influxd, in a child process so its peak RSS is its own;
- the bare read: the plan's InfluxQL pulled chunk by chunk and discarded (the floor);
- InfluxDB's own aggregate: count, sum, min, max and five percentile() GROUP BY time(1h),
  direction, mailer, customer.

and prints events/s, the child's peak RSS, where the executor's time goes, and the ratios
against their targets (>= 3x faster than InfluxDB's aggregate; a whole window, shipping
included, <= 1.15x the bare read; < 500 MB).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from federation.config import load_config
from federation.influx import InfluxClient
from federation.localstack import LocalStack
from federation.plan import AggregationPlan, resolve_plan

REPO = Path(__file__).resolve().parent.parent
HOUR = 3600 * 10**9
DC = "fra1"
AGGREGATION = "delivery_latency"
DIRECTIONS = ("in", "out")
MAILERS = tuple(f"mx{i}" for i in range(8))
CUSTOMERS = tuple(f"c{i:04d}" for i in range(2_000))


def the_plan() -> AggregationPlan:
    return resolve_plan(load_config(REPO), AGGREGATION, DC)


def write_events(client: InfluxClient, plan: AggregationPlan, start: int, n: int) -> float:
    """Write `n` raw events into [start, start + 1h); return the seconds it took."""
    client.execute(f'CREATE DATABASE "{plan.database}"')
    client.execute(
        f'CREATE RETENTION POLICY "{plan.retention_policy}" ON "{plan.database}" '
        "DURATION 30d REPLICATION 1 SHARD DURATION 1d DEFAULT"
    )
    rng = random.Random(n)
    began = time.perf_counter()
    batch: list[str] = []
    for i in range(n):
        t = start + rng.randrange(HOUR)
        latency = round(rng.lognormvariate(5.5, 1.1), 3)
        user = f"user{rng.randrange(10**6)}"
        batch.append(
            f"delivery,direction={rng.choice(DIRECTIONS)},mailer={rng.choice(MAILERS)},"
            f"customer={rng.choice(CUSTOMERS)} latency_ms={latency},"
            f'sender="{user}@example.com",recipient="rcpt{i}@example.org",'
            f'client_ip="10.{i % 256}.{i // 256 % 256}.{i // 65536 % 256}",'
            f'helo="mx{i % 97}.example.net" {t}'
        )
        if len(batch) == 5_000:
            client.write("\n".join(batch).encode(), database=plan.database)
            batch = []
    if batch:
        client.write("\n".join(batch).encode(), database=plan.database)
    return time.perf_counter() - began


def bare_read(client: InfluxClient, plan: AggregationPlan, start: int) -> tuple[float, int]:
    """Pull the plan's query for the window and discard it: (seconds, rows)."""
    began = time.perf_counter()
    rows = 0
    q = plan.query_between(start, start + plan.window_ns)
    for series in client.iter_series(q, database=plan.database):
        rows += len(series.values)
    return time.perf_counter() - began, rows


def influx_aggregate(client: InfluxClient, plan: AggregationPlan, start: int) -> tuple[float, int]:
    """InfluxDB computing the summaries itself: (seconds, groups)."""
    v = f'"{plan.value_field}"'
    pct = ", ".join(f"percentile({v}, {p:g})" for p in (50, 90, 95, 99, 99.9))
    q = (
        f"SELECT count({v}), sum({v}), min({v}), max({v}), {pct} "
        f'FROM "{plan.database}"."{plan.retention_policy}"."{plan.measurement}" '
        f"WHERE time >= {start} AND time < {start + plan.window_ns} "
        "GROUP BY time(1h), direction, mailer, customer"
    )
    began = time.perf_counter()
    groups = sum(1 for _ in client.iter_series(q, database=plan.database))
    return time.perf_counter() - began, groups


def child(dc_url: str, central_url: str, start: int) -> None:
    """Run the executor on one window, as the agent does, and print its figures as JSON."""
    from federation.agent import RunIds, Shipper, compute_window
    from federation.clock import SystemClock
    from federation.windows import Window

    plan = the_plan()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with InfluxClient(dc_url) as source, Shipper(central_url, dc=DC, token="bench") as shipper:
        computed = compute_window(
            source, plan, Window(start, plan.window_ns), run_ids=RunIds(SystemClock())
        )
        began = time.perf_counter()
        assert shipper.ship_window(plan, computed.points)
        ship_s = time.perf_counter() - began
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "events": computed.events,
                "groups": computed.groups,
                "suppressed": computed.suppressed_events,
                "points": len(computed.points),
                "read_s": computed.read_s,
                "compute_s": computed.compute_s,
                "ship_s": ship_s,
                "peak_rss_mb": peak_kb / 1024,
                "baseline_rss_mb": baseline_kb / 1024,
            }
        )
    )


REPEAT = 3
"""Reads and executor runs are repeated, interleaved, and the fastest of each kept: on a shared
machine one read's time varies by tens of percent."""


def executor_in_child(dc_url: str, central_url: str, start: int) -> dict[str, float]:
    answer = subprocess.run(
        [sys.executable, __file__, "--child", dc_url, central_url, str(start)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return figures


def measure(n: int) -> None:
    plan = the_plan()
    now = time.time_ns()
    start = now - now % HOUR - 2 * HOUR
    with LocalStack() as stack:
        dc = stack.influxd("dc")
        central = stack.influxd("central")
        with InfluxClient(central.url) as client:
            client.execute(f'CREATE DATABASE "{plan.central_database}"')
            client.execute(
                f'CREATE RETENTION POLICY "{plan.central_retention_policy}" ON '
                f'"{plan.central_database}" DURATION 400d REPLICATION 1'
            )
        with InfluxClient(dc.url, timeout=600) as client:
            write_s = write_events(client, plan, start, n)
            print(f"\n== {n:,} events, one hour, {len(DIRECTIONS) * len(MAILERS) * len(CUSTOMERS):,} "
                  f"possible series; written in {write_s:.1f}s ({n / write_s:,.0f} points/s)")  # fmt: skip
            # Warm the OS cache and influxd alike for every contender.
            bare_read(client, plan, start)
            reads, runs = [], []
            for _ in range(REPEAT):  # interleaved, so a busy spell hits both alike
                reads.append(bare_read(client, plan, start))
                runs.append(executor_in_child(dc.url, central.url, start))
        read_s, rows = min(reads)
        figures = min(runs, key=lambda f: float(f["read_s"] + f["compute_s"] + f["ship_s"]))
        with InfluxClient(dc.url, timeout=900) as client:
            influx_s, influx_groups = influx_aggregate(client, plan, start)
    executor_s = figures["read_s"] + figures["compute_s"]
    total_s = executor_s + figures["ship_s"]
    print(f"bare read (plan InfluxQL, chunked JSON, discarded): {read_s:8.2f}s  {rows:,} rows "
          f"(best of {REPEAT}, as the executor)")  # fmt: skip
    print(
        f"InfluxDB aggregate query (count,sum,min,max,5 pct): {influx_s:8.2f}s  {influx_groups:,} groups"
    )
    print(f"executor read    {figures['read_s']:8.2f}s  ({figures['read_s'] / total_s:5.1%})")
    print(f"executor compute {figures['compute_s']:8.2f}s  ({figures['compute_s'] / total_s:5.1%})"
          f"  {figures['groups']:,} groups, {figures['suppressed']:,} events suppressed")  # fmt: skip
    print(f"executor ship    {figures['ship_s']:8.2f}s  ({figures['ship_s'] / total_s:5.1%})"
          f"  {figures['points']:,} points to a central influxd")  # fmt: skip
    print(f"events/s (read+compute): {figures['events'] / executor_s:,.0f};  "
          f"with shipping: {figures['events'] / total_s:,.0f}")  # fmt: skip
    peak = figures["peak_rss_mb"]
    print(f"peak RSS of the executor's process: {peak:.0f} MB "
          f"(of which {figures['baseline_rss_mb']:.0f} MB at start)  "
          f"target < 500 MB: {'ok' if peak < 500 else 'MISSED'}")  # fmt: skip
    speedup = influx_s / executor_s
    floor = executor_s / read_s
    whole = total_s / read_s
    print(f"InfluxDB aggregate / executor (read+compute): {speedup:5.2f}x  "
          f"target >= 3x: {'ok' if speedup >= 3 else 'MISSED'}")  # fmt: skip
    print(f"executor (read+compute) / bare read:          {floor:5.2f}x")
    print(f"executor (read+compute+ship) / bare read:     {whole:5.2f}x  "
          f"target <= 1.15x: {'ok' if whole <= 1.15 else 'MISSED'}")  # fmt: skip
    spread = ", ".join(
        f"{(f['read_s'] + f['compute_s'] + f['ship_s']) / r:.2f}"
        for f, (r, _) in zip(runs, reads, strict=True)
    )
    print(f"  each round's (read+compute+ship) / its own bare read: {spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also run 10^6 events")
    parser.add_argument("--events", type=int, nargs="*", help="custom sizes instead")
    parser.add_argument("--child", nargs=3, metavar=("DC_URL", "CENTRAL_URL", "START"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    sizes = args.events or ([10**5, 10**6] if args.million else [10**5])
    for n in sizes:
        measure(n)


if __name__ == "__main__":
    main()
