"""Adding many decoded stores per owner in one numpy pass (`federation.core.sketch.decode_sums`).

Each owner's store is the bucket-wise sum of the stores it owns, each taken with its sign (+1
adds a histogram, -1 takes one away). Sums are exact: float64 `bincount` weights stay below
2**53 for the counts `read_batch` accepts, and the other path adds int64.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from federation.core._sketch_reference import EMPTY, frozen

Int64Array = npt.NDArray[np.int64]


Store = tuple[Int64Array, Int64Array, "Sequence[int] | Int64Array"]
"""Many histograms' buckets of one sign laid end to end: indexes, counts, and the bounds of
each histogram's slice (one more than there are histograms)."""


def sums_by_owner(
    counts: Sequence[int],
    zeros: Sequence[int],
    pos: Store,
    neg: Store,
    owners: Sequence[int],
    n_owners: int,
    signs: Sequence[int] | None,
) -> list[tuple[int, int, Int64Array, Int64Array, Int64Array, Int64Array]]:
    """Each owner's (count, zero count, positive store, negative store): the sums of the
    histograms it owns, each times its sign. Raises ValueError when an owner would hold less
    than nothing."""
    own = np.asarray(owners, dtype=np.int64)
    sign = None if signs is None else np.asarray(signs, dtype=np.int64)
    totals = []
    for part in (counts, zeros):
        total = np.zeros(n_owners, dtype=np.int64)
        values = np.asarray(part, dtype=np.int64)
        np.add.at(total, own, values if sign is None else values * sign)
        if (total < 0).any():
            raise ValueError("a histogram takes away more values than its owner holds")
        totals.append(total.tolist())
    p = sum_by_owner(*pos, own, n_owners, sign)
    m = sum_by_owner(*neg, own, n_owners, sign)
    return [(n, z, *ps, *ms) for n, z, ps, ms in zip(*totals, p, m, strict=True)]


def sum_by_owner(
    idx: Int64Array,
    cnt: Int64Array,
    bounds: Sequence[int] | Int64Array,
    own: Int64Array,
    n_owners: int,
    signs: Int64Array | None = None,
) -> list[tuple[Int64Array, Int64Array]]:
    """Each owner's store: the buckets of the stores it owns, counts added (times `signs[k]`
    for store `k`; buckets that sum to zero left out). Raises ValueError when a bucket sums
    to less than zero."""
    if idx.size == 0:
        return [(EMPTY, EMPTY)] * n_owners
    edges_in = np.asarray(bounds, dtype=np.int64)
    sizes = edges_in[1:] - edges_in[:-1]
    owner_of = np.repeat(own, sizes)
    weights = cnt if signs is None else cnt * np.repeat(signs, sizes)
    lo = int(idx.min())
    span = int(idx.max()) - lo + 1
    # One integer key per (owner, bucket): ordering by it orders by owner, then by index.
    key = owner_of * span + (idx - lo)
    if n_owners * span <= 4 * idx.size + 4096:
        dense = np.bincount(key, weights=weights, minlength=n_owners * span)
        cells = np.flatnonzero(dense)
        summed = dense[cells].astype(np.int64)
    else:
        order = np.argsort(key, kind="stable")
        k, c = key[order], weights[order]
        first = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
        cells, summed = k[first], np.add.reduceat(c, first)
        kept = summed != 0
        cells, summed = cells[kept], summed[kept]
    if signs is not None and (summed < 0).any():
        raise ValueError("a histogram takes away more than its owner holds in a bucket")
    owner_at = cells // span
    summed_idx = frozen(cells % span + lo)
    summed_cnt = frozen(summed)
    at = np.zeros(n_owners + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner_at, minlength=n_owners), out=at[1:])
    edges = at.tolist()
    return [(summed_idx[a:b], summed_cnt[a:b]) for a, b in itertools.pairwise(edges)]
