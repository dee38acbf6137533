"""Bench: the embedded executor on one DC-hour of raw delivery events.

    python bench/executor.py                 # 10^5 events
    python bench/executor.py --million       # 10^5, then 10^6 events (about two minutes more)
    python bench/executor.py --events 1000000 --personal-tags   # client_ip a tag: 10^6 series

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
import itertools
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from federation.config import load_config
from federation.config.resolve import resolve_plan
from federation.core.influxql import quote_ident, quote_string
from federation.core.plan import AggregationPlan
from federation.devstack.localstack import InfluxServer, LocalStack
from federation.influx import InfluxClient

REPO = Path(__file__).resolve().parent.parent
HOUR = 3600 * 10**9
DC = "fra1"
AGGREGATION = "delivery_latency"
DIRECTIONS = ("in", "out")
MAILERS = tuple(f"mx{i}" for i in range(8))
CUSTOMERS = tuple(f"c{i:04d}" for i in range(2_000))


def the_plan() -> AggregationPlan:
    return resolve_plan(load_config(REPO), AGGREGATION, DC)


def write_events(
    client: InfluxClient, plan: AggregationPlan, start: int, n: int, *, personal_tags: bool = False
) -> float:
    """Write `n` raw events into [start, start + 1h); return the seconds it took.

    With `personal_tags`, `client_ip` is a tag (one distinct value per event, so one series per
    event, as the case study's DCs had) instead of a field.
    """
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
        ip = f"10.{i % 256}.{i // 256 % 256}.{i // 65536 % 256}"
        tags = f"direction={rng.choice(DIRECTIONS)},mailer={rng.choice(MAILERS)},customer={rng.choice(CUSTOMERS)}"
        if personal_tags:
            tags = f"client_ip={ip},{tags}"
        batch.append(
            f"delivery,{tags} latency_ms={latency},"
            f'sender="{user}@example.com",recipient="rcpt{i}@example.org",'
            + ("" if personal_tags else f'client_ip="{ip}",')
            + f'helo="mx{i % 97}.example.net" {t}'
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
    from federation.core.clock import SystemClock
    from federation.core.windows import Window

    plan = the_plan()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with (
        InfluxClient(dc_url, timeout=1800) as source,
        Shipper(central_url, dc=DC, token="bench") as shipper,
    ):
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


class PeakRss:
    """The peak resident memory of process `pid` while the block runs, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
            if self._done.wait(0.05):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def chunked_reads(client: InfluxClient, plan: AggregationPlan, queries: list[str]) -> int:
    """Rows of `queries` read one after another as the executor reads (chunked JSON)."""
    rows = 0
    for q in queries:
        for series in client.iter_series(q, database=plan.database):
            rows += len(series.values)
    return rows


def kapacitor_read(url: str, plan: AggregationPlan, start: int) -> int:
    """The query a Kapacitor 1.5 batch branch sends (its InfluxDB client: POST, not chunked,
    no epoch, so RFC3339 times), body received whole and not decoded; returns its bytes."""
    q = plan.query_between(start, start + plan.window_ns)
    answer = httpx.post(f"{url}/query", params={"q": q, "db": plan.database}, timeout=1800)
    answer.raise_for_status()
    return len(answer.content)


def query_shapes(server: InfluxServer, plan: AggregationPlan, start: int, read_s: float) -> None:
    """Each way of reading the window, timed with influxd's peak RSS, against the bare read."""
    end = start + plan.window_ns
    where = plan.query_between(start, end)
    # Rows arrive series by series, one group after another, instead of merged by time.
    grouped = f"{where} GROUP BY {', '.join(quote_ident(d) for d in plan.dimensions)}"

    def by_time(parts: int) -> list[str]:
        cuts = [start + plan.window_ns * k // parts for k in range(parts + 1)]
        return [plan.query_between(a, b) for a, b in itertools.pairwise(cuts)]

    def by_tag(tag: str, values: tuple[str, ...]) -> list[str]:
        return [f"{where} AND {quote_ident(tag)} = {quote_string(v)}" for v in values]

    shapes: list[tuple[str, Callable[[InfluxClient], object]]] = [
        ("one query, chunked (the executor's)", lambda c: chunked_reads(c, plan, [where])),
        ("Kapacitor's: one query, not chunked", lambda c: kapacitor_read(server.url, plan, start)),
        ("one query, GROUP BY the dimensions", lambda c: chunked_reads(c, plan, [grouped])),
        ("split by time into 4", lambda c: chunked_reads(c, plan, by_time(4))),
        ("split by time into 12", lambda c: chunked_reads(c, plan, by_time(12))),
        ("split by direction (2)", lambda c: chunked_reads(c, plan, by_tag("direction", DIRECTIONS))),
        ("split by mailer (8)", lambda c: chunked_reads(c, plan, by_tag("mailer", MAILERS))),
    ]  # fmt: skip
    assert server.process is not None
    print(
        f"query shapes (influxd's peak RSS while each runs; ratio to the bare read {read_s:.2f}s):"
    )
    with InfluxClient(server.url, timeout=1800) as client:
        for label, run in shapes:
            with PeakRss(server.process.pid) as rss:
                began = time.perf_counter()
                size = run(client)
                took = time.perf_counter() - began
            unit = "bytes" if "Kapacitor" in label else "rows"
            print(f"  {label:<38} {took:8.2f}s  {took / read_s:5.2f}x  influxd {rss.peak_mb:6.0f} MB"
                  f"  {size:,} {unit}")  # fmt: skip


def measure(n: int, *, personal_tags: bool = False, repeat: int = REPEAT) -> None:
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
            write_s = write_events(client, plan, start, n, personal_tags=personal_tags)
            groups = len(DIRECTIONS) * len(MAILERS) * len(CUSTOMERS)
            shape = (
                f"client_ip a tag: {n:,} series" if personal_tags
                else f"personal data in fields: {groups:,} possible series"
            )  # fmt: skip
            print(f"\n== {n:,} events, one hour, {shape}; written in {write_s:.1f}s "
                  f"({n / write_s:,.0f} points/s)")  # fmt: skip
            # Warm the OS cache and influxd alike for every contender.
            bare_read(client, plan, start)
            reads, runs = [], []
            for _ in range(repeat):  # interleaved, so a busy spell hits both alike
                reads.append(bare_read(client, plan, start))
                runs.append(executor_in_child(dc.url, central.url, start))
        read_s, rows = min(reads)
        figures = min(runs, key=lambda f: float(f["read_s"] + f["compute_s"] + f["ship_s"]))
        if personal_tags:
            # Grouping a million series in InfluxDB is what drove it out of memory before.
            influx_s, influx_groups = math.nan, 0
            query_shapes(dc, plan, start, read_s)
        else:
            with InfluxClient(dc.url, timeout=900) as client:
                influx_s, influx_groups = influx_aggregate(client, plan, start)
    executor_s = figures["read_s"] + figures["compute_s"]
    total_s = executor_s + figures["ship_s"]
    print(f"bare read (plan InfluxQL, chunked JSON, discarded): {read_s:8.2f}s  {rows:,} rows "
          f"(best of {repeat}, as the executor)")  # fmt: skip
    if not personal_tags:
        print(
            f"InfluxDB aggregate query (count,sum,min,max,5 pct): {influx_s:8.2f}s  "
            f"{influx_groups:,} groups"
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
    if not personal_tags:
        print(f"InfluxDB aggregate / executor (read+compute): {speedup:5.2f}x  "
              f"target >= 3x: {'ok' if speedup >= 3 else 'MISSED'}")  # fmt: skip
    print(f"executor (read+compute) / bare read:          {floor:5.2f}x")
    print(f"executor (read+compute+ship) / bare read:     {whole:5.2f}x  "
          f"target <= 1.15x: {'ok' if whole <= 1.15 else 'MISSED'}")  # fmt: skip
    paired = sorted(
        (f["read_s"] + f["compute_s"] + f["ship_s"]) / r
        for f, (r, _) in zip(runs, reads, strict=True)
    )
    print(f"  each round's (read+compute+ship) / its own bare read, sorted: "
          f"{', '.join(f'{x:.2f}' for x in paired)}; median {statistics.median(paired):.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also run 10^6 events")
    parser.add_argument("--events", type=int, nargs="*", help="custom sizes instead")
    parser.add_argument(
        "--personal-tags",
        action="store_true",
        help="write client_ip as a tag (one series per event, the case study's cardinality) "
        "and time the ways of reading the window: Kapacitor's, split by time, by a dimension",
    )
    parser.add_argument("--repeat", type=int, default=REPEAT, help="rounds of read + executor")
    parser.add_argument("--child", nargs=3, metavar=("DC_URL", "CENTRAL_URL", "START"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    sizes = args.events or ([10**5, 10**6] if args.million else [10**5])
    for n in sizes:
        measure(n, personal_tags=args.personal_tags, repeat=args.repeat)


if __name__ == "__main__":
    main()
