"""Bench: the embedded executor on one DC-hour of raw delivery events.

    python bench/executor.py                 # 10^5 events
    python bench/executor.py --million       # 10^5, then 10^6 events (about two minutes more)
    python bench/executor.py --events 1000000 --personal-tags   # client_ip a tag: 10^6 series
    python bench/executor.py --all           # 10^5, 10^6, 10^6 with client_ip a tag: one table

For each size: writes the events (2 directions x 8 mailers x 2,000 customers, personal data as
fields sender, recipient, client_ip, helo) into a spawned influxd, then measures in the same run

- the bare read: the plan's InfluxQL pulled chunk by chunk and discarded (the floor);
- read + compute: the executor reads the window with the plan's InfluxQL and makes every point
  (`compute_window`), shipping none;
- the whole window: the agent's own path (`run_windows` into a `Shipper`) reads, computes and
  ships the window to a spawned central influxd, manifest accepted last; central runs on the
  same cores, so its parsing and storing is part of what the agent waits for;
- central's store alone: the window's points, serialized beforehand, written to central as the
  shipper writes them; no executor can start it before the read's last row, so the bare read
  plus it is the floor of a whole window on these cores;
- InfluxDB's own aggregate: count, sum, min, max and five percentile() GROUP BY time(1h),
  direction, mailer, customer.

The first four are run in interleaved rounds (the CPU seconds of the DC's influxd, the reader or
executor and central's influxd counted for the bare read and the whole window: what the machine's
cores must do for each, whatever overlaps), the executor in a child process so its peak RSS is its
own. It prints events/s, the peak RSS, where the executor's time goes, each round's ratios to its
own bare read and their medians, against the targets (>= 3x faster than InfluxDB's aggregate; a
whole window, shipping included, <= 1.15x the bare read; < 500 MB), and closes with one table
of every size it ran.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def child(mode: str, dc_url: str, central_url: str, start: int) -> None:
    """Run the executor on one window, as the agent does, and print its figures as JSON.

    `compute`: read + compute, every point made (histograms encoded) but none shipped.
    `whole`: the agent's path, `run_windows` into a `Shipper`: read, compute and ship, the
    manifest accepted last.
    """
    from federation.agent import RunIds, Shipper, compute_window, run_windows
    from federation.core.clock import SystemClock
    from federation.core.windows import Window

    plan = the_plan()
    window = Window(start, plan.window_ns)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with (
        InfluxClient(dc_url, timeout=1800) as source,
        Shipper(central_url, dc=DC, token="bench", timeout=1800) as shipper,
    ):
        began = time.perf_counter()
        cpu_began = own_cpu_seconds()
        if mode == "compute":
            computed = compute_window(source, plan, window, run_ids=RunIds(SystemClock()))
            points = len(list(computed.points))
            read_s, compute_s, ship_s = computed.read_s, computed.compute_s, 0.0
            events, groups = computed.events, computed.groups
            suppressed = computed.suppressed_events
        else:
            result = run_windows(
                plan, [window], source=source, sink=shipper, run_ids=RunIds(SystemClock())
            )
            assert result.ok, result.summary()
            (w,) = result.windows
            read_s, compute_s, ship_s = w.read_s, w.compute_s, w.ship_s
            events, groups, suppressed, points = w.events, w.groups, w.suppressed_events, w.points
        total_s = time.perf_counter() - began
        cpu_s = own_cpu_seconds() - cpu_began
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "events": events,
                "groups": groups,
                "suppressed": suppressed,
                "points": points,
                "read_s": read_s,
                "compute_s": compute_s,
                "ship_s": ship_s,
                "total_s": total_s,
                "cpu_s": cpu_s,
                "peak_rss_mb": peak_kb / 1024,
                "baseline_rss_mb": baseline_kb / 1024,
            }
        )
    )


REPEAT = 3
"""Rounds of (bare read, read + compute, whole window), interleaved: on a shared machine one
read's time varies by tens of percent, so each round's runs are set against its own bare read."""


def executor_in_child(mode: str, dc_url: str, central_url: str, start: int) -> dict[str, float]:
    answer = subprocess.run(
        [sys.executable, __file__, "--child", mode, dc_url, central_url, str(start)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return figures


def own_cpu_seconds() -> float:
    """CPU seconds this process has used (user and system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` has used (user and system), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cpu:
    """CPU seconds each process spent on one contender's run."""

    dc: float = 0.0
    central: float = 0.0
    own: float = 0.0

    @property
    def total(self) -> float:
        return self.dc + self.central + self.own


def with_cpu(servers: tuple[int, int], run: Callable[[], float]) -> Cpu:
    """Run `run` (it returns its own process's CPU seconds) and add the DC's and central's
    influxd CPU seconds meanwhile (`servers`: their pids)."""
    before = [cpu_seconds(pid) for pid in servers]
    own = run()
    dc, central = (cpu_seconds(pid) - b for pid, b in zip(servers, before, strict=True))
    return Cpu(dc, central, own)


def window_bodies(client: InfluxClient, plan: AggregationPlan, start: int) -> list[bytes]:
    """The window's points as the agent ships them: line protocol, in batches of the
    shipper's size, the manifest last."""
    from federation.agent import RunIds, compute_window
    from federation.agent.shipper import DEFAULT_BATCH_POINTS
    from federation.core.clock import SystemClock
    from federation.core.lineprotocol import serialize
    from federation.core.windows import Window

    window = Window(start, plan.window_ns)
    points = list(compute_window(client, plan, window, run_ids=RunIds(SystemClock())).points)
    step = DEFAULT_BATCH_POINTS
    return [serialize(points[i : i + step]) for i in range(0, len(points), step)]


def central_store(central_url: str, plan: AggregationPlan, bodies: list[bytes]) -> float:
    """Seconds central takes to store the window's points, and nothing else: the batches
    made beforehand, two written at once as the shipper does (the same points each time)."""
    with InfluxClient(central_url, timeout=1800) as central, ThreadPoolExecutor(2) as writers:
        began = time.perf_counter()
        for done in writers.map(
            lambda body: central.write(
                body,
                database=plan.central_database,
                retention_policy=plan.central_retention_policy,
            ),
            bodies,
        ):
            del done
        return time.perf_counter() - began


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


@dataclass(frozen=True)
class Row:
    """One size's figures for the closing table: medians over the rounds."""

    label: str
    bare_s: float
    compute_s: float
    whole_s: float
    compute_ratio: float
    whole_ratio: float
    peak_rss_mb: float


def measure(
    n: int, *, personal_tags: bool = False, repeat: int = REPEAT, shapes: bool = False
) -> Row:
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
        with InfluxClient(dc.url, timeout=1800) as client:
            write_s = write_events(client, plan, start, n, personal_tags=personal_tags)
            groups = len(DIRECTIONS) * len(MAILERS) * len(CUSTOMERS)
            shape = (
                f"client_ip a tag: {n:,} series" if personal_tags
                else f"personal data in fields: {groups:,} possible series"
            )  # fmt: skip
            print(f"\n== {n:,} events, one hour, {shape}; written in {write_s:.1f}s "
                  f"({n / write_s:,.0f} points/s)")  # fmt: skip
            # Warm the OS cache and influxd alike for every contender, and central: the first
            # shipment of a window creates central's shard, which no later window pays.
            bare_read(client, plan, start)
            executor_in_child("whole", dc.url, central.url, start)
            bodies = window_bodies(client, plan, start)
            reads: list[tuple[float, int]] = []
            computes: list[dict[str, float]] = []
            wholes: list[dict[str, float]] = []
            stores: list[float] = []
            assert dc.process is not None and central.process is not None
            servers = (dc.process.pid, central.process.pid)
            read_cpu: list[Cpu] = []
            whole_cpu: list[Cpu] = []

            def read_once() -> float:
                cpu_began = own_cpu_seconds()
                reads.append(bare_read(client, plan, start))
                return own_cpu_seconds() - cpu_began

            def whole_once() -> float:
                wholes.append(executor_in_child("whole", dc.url, central.url, start))
                return wholes[-1]["cpu_s"]

            contenders: list[Callable[[], None]] = [
                lambda: read_cpu.append(with_cpu(servers, read_once)),
                lambda: computes.append(executor_in_child("compute", dc.url, central.url, start)),
                lambda: whole_cpu.append(with_cpu(servers, whole_once)),
                lambda: stores.append(central_store(central.url, plan, bodies)),
            ]
            for round_ in range(repeat):
                # Interleaved, so a busy spell hits all three alike, and each round starts
                # with another of them, so none always runs first.
                for k in range(len(contenders)):
                    contenders[(round_ + k) % len(contenders)]()
        if shapes:
            query_shapes(dc, plan, start, min(reads)[0])
        if personal_tags:
            # Grouping a million series in InfluxDB is what drove it out of memory before.
            influx_s, influx_groups = math.nan, 0
        else:
            with InfluxClient(dc.url, timeout=1800) as client:
                influx_s, influx_groups = influx_aggregate(client, plan, start)
    rows = reads[0][1]
    read_s = statistics.median(r for r, _ in reads)
    compute_s = statistics.median(f["total_s"] for f in computes)
    whole_s = statistics.median(f["total_s"] for f in wholes)
    figures = min(wholes, key=lambda f: f["total_s"])
    print(f"bare read (plan InfluxQL, chunked JSON, discarded): {read_s:8.2f}s  {rows:,} rows "
          f"(median of {repeat})")  # fmt: skip
    if not personal_tags:
        print(
            f"InfluxDB aggregate query (count,sum,min,max,5 pct): {influx_s:8.2f}s  "
            f"{influx_groups:,} groups"
        )
    total_s = figures["total_s"]
    print(f"the fastest whole window, {total_s:.2f}s:")
    print(f"  read            {figures['read_s']:8.2f}s  ({figures['read_s'] / total_s:5.1%})")
    print(f"  compute         {figures['compute_s']:8.2f}s  ({figures['compute_s'] / total_s:5.1%})"
          f"  {figures['groups']:,} groups, {figures['suppressed']:,} events suppressed")  # fmt: skip
    print(f"  make + ship     {figures['ship_s']:8.2f}s  ({figures['ship_s'] / total_s:5.1%})"
          f"  {figures['points']:,} points to a central influxd")  # fmt: skip
    print(f"events/s (read+compute): {n / compute_s:,.0f};  with shipping: {n / whole_s:,.0f}")
    peak = max(f["peak_rss_mb"] for f in wholes + computes)
    print(f"peak RSS of the executor's process: {peak:.0f} MB "
          f"(of which {figures['baseline_rss_mb']:.0f} MB at start)  "
          f"target < 500 MB: {'ok' if peak < 500 else 'MISSED'}")  # fmt: skip
    if not personal_tags:
        speedup = influx_s / compute_s
        print(f"InfluxDB aggregate / executor (read+compute): {speedup:5.2f}x  "
              f"target >= 3x: {'ok' if speedup >= 3 else 'MISSED'}")  # fmt: skip

    def paired(runs: list[dict[str, float]]) -> list[float]:
        return sorted(f["total_s"] / r for f, (r, _) in zip(runs, reads, strict=True))

    compute_ratios, whole_ratios = paired(computes), paired(wholes)
    # What no executor can avoid after the read: central storing the points, which it can
    # begin only once the read's last row has made every group final.
    floor_ratios = sorted(1 + store / r for store, (r, _) in zip(stores, reads, strict=True))
    cores = os.cpu_count() or 1
    work = statistics.median(c.total for c in whole_cpu)
    print(
        "CPU seconds, medians: the bare read: DC influxd "
        f"{statistics.median(c.dc for c in read_cpu):.2f} + reader "
        f"{statistics.median(c.own for c in read_cpu):.2f}; a whole window: DC influxd "
        f"{statistics.median(c.dc for c in whole_cpu):.2f} + executor "
        f"{statistics.median(c.own for c in whole_cpu):.2f} + central influxd "
        f"{statistics.median(c.central for c in whole_cpu):.2f} = {work:.2f}, which "
        f"{cores} cores cannot do in less than {work / cores:.2f}s = "
        f"{work / cores / read_s:.2f}x the bare read"
    )
    print(f"central storing the window's {figures['points']:,} points alone, two batches at once: "
          f"{statistics.median(stores):.2f}s (median of {repeat}); the bare read and that store, "
          f"each round: {', '.join(f'{x:.2f}' for x in floor_ratios)}; median "
          f"{statistics.median(floor_ratios):.2f}x the bare read")  # fmt: skip
    for label, ratios in (("read+compute", compute_ratios), ("read+compute+ship", whole_ratios)):
        print(f"each round's {label} / its own bare read, sorted: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}x")  # fmt: skip
    return Row(
        f"{n:,} events" + (", client_ip a tag" if personal_tags else ""),
        read_s,
        compute_s,
        whole_s,
        statistics.median(compute_ratios),
        statistics.median(whole_ratios),
        peak,
    )


def print_table(rows: list[Row], repeat: int) -> None:
    """The closing table: medians over the rounds; ratios are the median of each round's run
    over that round's own bare read (target: whole window <= 1.15x, peak RSS < 500 MB)."""
    print(f"\n== one window, medians of {repeat} interleaved rounds")
    head = (f"{'':<32} {'bare read':>9} {'read+compute':>12} {'whole window':>12} "
            f"{'r+c/bare':>8} {'whole/bare':>10} {'peak RSS':>8}")  # fmt: skip
    print(head)
    for r in rows:
        verdict = "ok" if r.whole_ratio <= 1.15 and r.peak_rss_mb < 500 else "MISSED"
        print(f"{r.label:<32} {r.bare_s:8.2f}s {r.compute_s:11.2f}s {r.whole_s:11.2f}s "
              f"{r.compute_ratio:7.2f}x {r.whole_ratio:9.2f}x {r.peak_rss_mb:5.0f} MB  {verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also run 10^6 events")
    parser.add_argument(
        "--all",
        action="store_true",
        help="10^5 and 10^6 events, then 10^6 with client_ip a tag, in one table",
    )
    parser.add_argument("--events", type=int, nargs="*", help="custom sizes instead")
    parser.add_argument(
        "--personal-tags",
        action="store_true",
        help="write client_ip as a tag (one series per event, the case study's cardinality) "
        "and time the ways of reading the window: Kapacitor's, split by time, by a dimension",
    )
    parser.add_argument("--repeat", type=int, default=REPEAT, help="rounds of read + executor")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "DC_URL", "CENTRAL_URL", "START"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
        return
    runs = [(n, False) for n in (10**5, 10**6)] + [(10**6, True)] if args.all else [
        (n, args.personal_tags)
        for n in args.events or ([10**5, 10**6] if args.million else [10**5])
    ]  # fmt: skip
    table = [
        measure(n, personal_tags=tags, repeat=args.repeat, shapes=args.personal_tags)
        for n, tags in runs
    ]
    print_table(table, args.repeat)


if __name__ == "__main__":
    main()
