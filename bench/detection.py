"""Bench: a detection over one DC-hour of raw delivery events, against the bare read.

    python bench/detection.py                # 10^5 events
    python bench/detection.py --million      # 10^5, then 10^6 events

Writes the events of `bench/executor.py` (personal data as fields; `client_ip` and
`recipient` distinct per event, `sender` one of 10^6 users) into a spawned influxd, then, for
each shipped example detection, times in child processes (so each peak RSS is its own),
interleaved and best of `--repeat`:

- the bare read: the detection plan's InfluxQL pulled chunk by chunk and discarded;
- the detection: the same read counted with `DetectionCounter` (the embedded executor's
  `read_detection_window`), findings and counts computed.

and prints the ratio against its target (<= 1.5x the bare read) and both peak RSS figures, so
that memory at 10^6 distinct keys (`senders_per_client_ip`) is seen next to the read's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from executor import HOUR, REPO, the_plan, write_events

from federation.agent.detection_executor import read_detection_window
from federation.config import load_config
from federation.config.resolve import resolve_detection
from federation.core.detection_plan import DetectionPlan
from federation.core.windows import Window
from federation.devstack.localstack import LocalStack
from federation.influx import InfluxClient

DC = "fra1"
DETECTIONS = ("senders_per_client_ip", "recipients_per_sender", "helos_per_sender")
REPEAT = 3


def plan_of(name: str) -> DetectionPlan:
    return resolve_detection(load_config(REPO), name, DC)


def child(what: str, name: str, url: str, start: int) -> None:
    """One bare read or one detection of the window, as JSON: seconds, rows or keys, peak RSS."""
    plan = plan_of(name)
    began = time.perf_counter()
    with InfluxClient(url, timeout=1800) as client:
        if what == "read":
            q = plan.query_between(start, start + plan.window_ns)
            size = sum(len(s.values) for s in client.iter_series(q, database=plan.database))
        else:
            result = read_detection_window(client, plan, Window(start, plan.window_ns))
            size = result.keys
    took = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s": took, "size": size, "peak_rss_mb": peak}))


def in_child(what: str, name: str, url: str, start: int) -> dict[str, float]:
    answer = subprocess.run(
        [sys.executable, __file__, "--child", what, name, url, str(start)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    figures: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return figures


def measure(n: int, repeat: int) -> None:
    now = time.time_ns()
    start = now - now % HOUR - 2 * HOUR
    with LocalStack() as stack:
        dc = stack.influxd("dc")
        with InfluxClient(dc.url, timeout=600) as client:
            write_s = write_events(client, the_plan(), start, n)
        print(f"\n== {n:,} events, one hour; written in {write_s:.1f}s")
        for name in DETECTIONS:
            in_child("read", name, dc.url, start)  # warm the caches for both contenders
            reads, runs = [], []
            for _ in range(repeat):  # interleaved, so a busy spell hits both alike
                reads.append(in_child("read", name, dc.url, start))
                runs.append(in_child("detect", name, dc.url, start))
            read = min(reads, key=lambda f: f["s"])
            run = min(runs, key=lambda f: f["s"])
            ratio = run["s"] / read["s"]
            paired = sorted(r["s"] / b["s"] for r, b in zip(runs, reads, strict=True))
            print(
                f"{name:<22} bare read {read['s']:7.2f}s ({read['size']:,.0f} rows, "
                f"{read['peak_rss_mb']:.0f} MB)  detection {run['s']:7.2f}s "
                f"({run['size']:,.0f} keys, {run['peak_rss_mb']:.0f} MB)  "
                f"ratio {ratio:.2f}x target <= 1.5x: {'ok' if ratio <= 1.5 else 'MISSED'}  "
                f"(each round: {', '.join(f'{p:.2f}' for p in paired)})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also run 10^6 events")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="rounds of read + detection")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
        return
    for n in [10**5, 10**6] if args.million else [10**5]:
        measure(n, args.repeat)


if __name__ == "__main__":
    main()
