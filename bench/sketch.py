"""Benchmark the histogram and the per-group summaries against numpy.sort of the same data.

Run with ``python bench/sketch.py``. Every figure is the best of a few repeats, and each is
printed next to a baseline measured in the same run, so the ratios mean something on any machine.
"""

from __future__ import annotations

import math
import time
import timeit
from collections.abc import Callable

import numpy as np

from federation.core.sketch import Sketch, _decode, decode_many, encode_many, merge_all
from federation.core.stats import summarize_groups

ALPHA = 0.01
SEED = 20240601
MEDIAN_MS = 200.0
SIGMA = 0.8
EVENTS = 1_000_000
GROUPS = 32_000
HOURS_IN_MONTH = 30 * 24
DCS = 10
VALUES_PER_HOUR = 140
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def best(fn: Callable[[], object], repeat: int = 5) -> float:
    """Fastest of ``repeat`` single runs, in seconds."""
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def latencies(rng: np.random.Generator, n: int) -> np.ndarray:
    """Delivery latencies in milliseconds: lognormal around 200 ms."""
    return rng.lognormal(math.log(MEDIAN_MS), SIGMA, n)


def bench_build(rng: np.random.Generator) -> None:
    values = latencies(rng, EVENTS)
    t_sort = best(lambda: np.sort(values))
    t_build = best(lambda: Sketch.from_values(values, ALPHA))
    sketch = Sketch.from_values(values, ALPHA)
    print(f"build from {EVENTS:,} lognormal values (alpha={ALPHA})")
    print(f"  numpy.sort           {t_sort * 1e3:8.2f} ms")
    print(f"  Sketch.from_values   {t_build * 1e3:8.2f} ms   sort/build = {t_sort / t_build:.1f}x")
    print(f"  {len(sketch.positive_buckets())} buckets, encoded in {len(sketch.encode())} bytes")


def bench_month(rng: np.random.Generator) -> None:
    n_hist = HOURS_IN_MONTH * DCS
    sizes = rng.poisson(VALUES_PER_HOUR, n_hist)
    hourly = [Sketch.from_values(latencies(rng, int(k)), ALPHA) for k in sizes]
    texts = [s.encode() for s in hourly]
    mean_len = sum(map(len, texts)) / len(texts)
    mean_buckets = sum(len(s.positive_buckets()) for s in hourly) / len(hourly)

    t_reference = best(lambda: [_decode(t, ALPHA) for t in texts], repeat=3)
    t_decode = best(lambda: [Sketch.decode(t, ALPHA) for t in texts], repeat=3)
    t_many = best(lambda: decode_many(texts, ALPHA), repeat=3)
    t_merge = best(lambda: merge_all(hourly))
    t_encode = best(lambda: [s.encode() for s in hourly], repeat=3)
    merged = merge_all(hourly)
    baseline = np.concatenate([latencies(rng, int(k)) for k in sizes])
    t_sort = best(lambda: np.sort(baseline))
    print(f"one month of hourly histograms from {DCS} DCs ({n_hist:,} histograms)")
    print(f"  mean {mean_buckets:.0f} buckets, {mean_len:.0f} bytes encoded per histogram")
    print(f"  merge_all            {t_merge * 1e3:8.2f} ms   (target < 50 ms)")
    print(
        f"  decode all strings   {t_decode * 1e3:8.2f} ms   ({t_decode / n_hist * 1e6:.1f} us each)"
    )
    print(
        f"  reference decoder    {t_reference * 1e3:8.2f} ms   "
        f"({t_reference / n_hist * 1e6:.1f} us each; reference/decode = {t_reference / t_decode:.1f}x)"
    )
    print(
        f"  decode_many          {t_many * 1e3:8.2f} ms   ({t_many / n_hist * 1e6:.1f} us each; "
        f"reference/decode_many = {t_reference / t_many:.1f}x)"
    )
    print(
        f"  encode all           {t_encode * 1e3:8.2f} ms   ({t_encode / n_hist * 1e6:.1f} us each)"
    )
    print(
        f"  numpy.sort of the {baseline.size:,} raw values: {t_sort * 1e3:.2f} ms "
        f"(sort/merge = {t_sort / t_merge:.1f}x); merged count {merged.count:,}"
    )


def bench_groups(rng: np.random.Generator) -> None:
    values = latencies(rng, EVENTS)
    codes = rng.integers(0, GROUPS, EVENTS)
    t_sort = best(lambda: np.sort(values))
    t_sum = best(lambda: summarize_groups(values, codes, GROUPS, PERCENTILES, ALPHA), repeat=3)
    print(
        f"summarize_groups: {EVENTS:,} values in {GROUPS:,} groups, {len(PERCENTILES)} percentiles"
    )
    print(f"  numpy.sort           {t_sort * 1e3:8.2f} ms")
    print(
        f"  summarize_groups     {t_sum * 1e3:8.2f} ms   summarize/sort = {t_sum / t_sort:.2f}x; "
        f"(summarize - sort)/group = {(t_sum - t_sort) / GROUPS * 1e6:.2f} us"
    )
    for n in (EVENTS // 10, EVENTS):  # sparse (~3 values a group) and dense histograms
        sketches = [
            s.sketch
            for s in summarize_groups(values[:n], codes[:n], GROUPS, PERCENTILES, ALPHA)
            if s is not None
        ]
        assert encode_many(sketches) == [s.encode() for s in sketches]
        t_one = best(lambda: [s.encode() for s in sketches], repeat=3)  # noqa: B023
        t_many = best(lambda: encode_many(sketches), repeat=3)  # noqa: B023
        per = 1e6 / len(sketches)
        print(
            f"  encode {len(sketches):,} group histograms of {n:,} values: one by one "
            f"{t_one * per:.2f} us/group, encode_many {t_many * per:.2f} us/group; "
            f"one-by-one/encode_many = {t_one / t_many:.1f}x (target >= 2x)"
        )


def main() -> None:
    rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    bench_build(rng)
    bench_month(rng)
    bench_groups(rng)
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
