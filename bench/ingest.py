"""Benchmark: `ingest` against posting the same line protocol, to one local influxd, in one run.

    python bench/ingest.py [--events 200000] [--batch 5000] [--rounds 3]

Starts an influxd with `federation.devstack.localstack`, generates synthetic delivery events (the example
schema: three tags, latency, size, status and four personal-data strings), and alternates two
measurements, each into a freshly created raw database:

- baseline: the events already encoded as line protocol, in the same batches, posted one batch
  after another with `InfluxClient.write`;
- ingest: `federation.ingest.ingest` over the JSON lines (parse, check, encode, tie-break,
  write through the bounded queue).

Prints events/s of both for every round and the median of the per-round ratios: each ratio
compares two measurements taken back to back on the same server, so it depends little on the
machine or on other load; nothing here asserts an absolute time.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from federation.config import load_config
from federation.devstack.localstack import LocalStack
from federation.influx import InfluxClient
from federation.ingest import Encoder, ingest, load_schema

REPO = Path(__file__).resolve().parent.parent
DC = "fra1"


def synthetic_events(count: int, seed: int = 7) -> bytes:
    """`count` delivery events as JSON lines, one millisecond apart, ending an hour ago."""
    rng = random.Random(seed)
    start = (int(time.time()) - 3600) * 1000 - count
    out = []
    for i in range(count):
        event = {
            "ts": start + i,
            "direction": "inbound" if rng.random() < 0.6 else "outbound",
            "mailer": f"mx{rng.randrange(12)}",
            "customer": f"c{rng.randrange(2000)}",
            "latency_ms": round(rng.lognormvariate(5, 1), 3),
            "size": rng.randrange(500, 5_000_000),
            "status": rng.choice(("delivered", "deferred", "bounced")),
            "sender": f"user{rng.randrange(100_000)}@example.org",
            "recipient": f"rcpt{rng.randrange(100_000)}@example.com",
            "client_ip": f"198.51.{rng.randrange(256)}.{rng.randrange(256)}",
            "helo": f"mail{rng.randrange(500)}.example.net",
        }
        out.append(json.dumps(event, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def fresh_raw_database(client: InfluxClient) -> None:
    client.execute('DROP DATABASE "mail"')
    client.execute('CREATE DATABASE "mail"')
    client.execute(
        'CREATE RETENTION POLICY "raw_30d" ON "mail" DURATION 30d REPLICATION 1 SHARD DURATION 1d'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    config = load_config(REPO)
    schema = load_schema(config, DC)
    data = synthetic_events(args.events)
    encoder = Encoder(schema)
    lines = [encoder.encode(json.loads(line)) for line in data.splitlines()]
    batches = [b"".join(lines[i : i + args.batch]) for i in range(0, len(lines), args.batch)]
    print(
        f"{args.events:,} events, {len(data) / args.events:.0f} bytes of JSON and "
        f"{sum(map(len, batches)) / args.events:.0f} of line protocol each, "
        f"batches of {args.batch:,}"
    )

    baseline: list[float] = []
    ingested: list[float] = []
    with LocalStack() as stack, tempfile.TemporaryDirectory() as tmp:
        server = stack.influxd("bench")
        with InfluxClient(server.url) as client:
            for round_no in range(1, args.rounds + 1):
                fresh_raw_database(client)
                started = time.perf_counter()
                for body in batches:
                    client.write(body, database="mail", retention_policy="raw_30d")
                baseline.append(args.events / (time.perf_counter() - started))

                fresh_raw_database(client)
                started = time.perf_counter()
                summary = ingest(
                    config,
                    DC,
                    io.BytesIO(data),
                    schema=schema,
                    client=client,
                    batch_size=args.batch,
                    dead_letter=Path(tmp) / "dead.jsonl",
                )
                ingested.append(args.events / (time.perf_counter() - started))
                assert summary.points_written == args.events, summary
                print(
                    f"round {round_no}: post line protocol {baseline[-1]:>9,.0f} events/s   "
                    f"ingest {ingested[-1]:>9,.0f} events/s   "
                    f"ratio {ingested[-1] / baseline[-1]:.2f}"
                )
    ratios = [i / b for i, b in zip(ingested, baseline, strict=True)]
    print(
        f"median of per-round ratios {statistics.median(ratios):.2f} (target >= 0.70); "
        f"best rounds: post line protocol {max(baseline):,.0f} events/s, "
        f"ingest {max(ingested):,.0f} events/s"
    )


if __name__ == "__main__":
    main()
