"""Exact per-group summaries of one window of raw values: count, sum, min, max, percentiles, sketch.

Both executors (the Kapacitor UDF and the embedded executor) summarise through
``summarize_groups``, so for the same raw values they produce the same numbers bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from federation.core._sketch_fast import log_gamma
from federation.core._sketch_reference import EMPTY
from federation.core.sketch import Sketch, _check_alpha, bucket_indexes

__all__ = [
    "GroupSummary",
    "GroupedValues",
    "apply_k_anonymity",
    "nearest_rank",
    "percentile_field",
    "summarize_groups",
]


def percentile_field(p: float) -> str:
    """The field name of percentile ``p``: ``p`` + the number with ``.`` written ``_``.

    ``50 -> "p50"``, ``99.9 -> "p99_9"``, ``99.99 -> "p99_99"``; never a trailing ``_0`` and
    never an exponent. Raises ValueError unless 0 < p <= 100.
    """
    if isinstance(p, bool):
        raise ValueError("percentile must be a number")
    value = float(p)
    if not (0.0 < value <= 100.0):
        raise ValueError(f"percentile must be in (0, 100], got {p!r}")
    # repr is the shortest text that reads back as the same float; Decimal drops exponents.
    text = str(int(value)) if value.is_integer() else format(Decimal(repr(value)), "f")
    return "p" + text.replace(".", "_")


def _rank_index(n: int, p: float) -> int:
    # Same float64 operations, in the same order, as InfluxQL's percentile().
    return math.floor(float(n) * p / 100.0 + 0.5) - 1


def nearest_rank(sorted_values: npt.NDArray[np.float64], p: float) -> float | None:
    """InfluxQL's ``percentile(field, p)`` of ascending ``sorted_values``: the value at index
    ``floor(N * p / 100 + 0.5) - 1``, or None when that index is outside ``[0, N)``."""
    p = float(p)
    if math.isnan(p):
        raise ValueError("percentile must not be NaN")
    n = int(sorted_values.shape[0])
    i = _rank_index(n, p)
    if i < 0 or i >= n:
        return None
    return float(sorted_values[i])


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """What one group of one window exports: exact statistics and the mergeable histogram."""

    count: int
    sum: float
    min: float
    max: float
    percentiles: dict[str, float]
    sketch: Sketch


def _group_value_order(
    values: npt.NDArray[np.float64], codes: npt.NDArray[np.int64], n_groups: int
) -> npt.NDArray[np.int64]:
    """A permutation ordering by group code, then by value (equal values in any order)."""
    n = values.size
    index_bits = max(1, (n - 1).bit_length())
    group_bits = max(1, (n_groups - 1).bit_length())
    value_bits = 64 - index_bits - group_bits
    if value_bits >= _MIN_VALUE_BITS:
        return _packed_order(values, codes, index_bits, value_bits)
    by_value = np.argsort(values)
    if n_groups <= 1 << 16:
        # A stable sort of 16-bit keys is a radix sort: linear, much faster than lexsort.
        small = codes.astype(np.uint16)
        return by_value[np.argsort(small[by_value], kind="stable")].astype(np.int64)
    return np.lexsort((values, codes)).astype(np.int64)


# Below this many bits of the value in the packed key, too many values would tie.
_MIN_VALUE_BITS = 16


def _packed_order(
    values: npt.NDArray[np.float64],
    codes: npt.NDArray[np.int64],
    index_bits: int,
    value_bits: int,
) -> npt.NDArray[np.int64]:
    # One np.sort (not argsort, about twice as fast) of uint64 keys packing the group code, the
    # top bits of an order-preserving image of the value, and the position (to recover it).
    bits = values.view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    ordered = np.where(negative, ~bits, bits | np.uint64(1 << 63))
    key = codes.astype(np.uint64) << np.uint64(index_bits + value_bits)
    key |= (ordered >> np.uint64(64 - value_bits)) << np.uint64(index_bits)
    key |= np.arange(values.size, dtype=np.uint64)
    key.sort()
    order = (key & np.uint64((1 << index_bits) - 1)).astype(np.int64)
    # Values whose truncated images tie keep their input order; put those runs right.
    high = key >> np.uint64(index_bits)
    sv = values[order]
    same_run = high[1:] == high[:-1]
    wrong = np.flatnonzero(same_run & (sv[1:] < sv[:-1]))
    if wrong.size:
        run_id = np.concatenate(([0], np.cumsum(~same_run)))
        bad_runs = np.unique(run_id[wrong])
        members = np.flatnonzero(np.isin(run_id, bad_runs))
        fix = np.lexsort((sv[members], run_id[members]))
        order[members] = order[members][fix]
    return order


def summarize_groups(
    values: npt.ArrayLike,
    group_codes: npt.ArrayLike,
    n_groups: int,
    percentiles: Sequence[float],
    alpha: float,
    *,
    min_count: int = 1,
) -> list[GroupSummary | None]:
    """Per-group summaries, the list index being the group code; None for a group with fewer
    than ``min_count`` values (by default: with no values), which costs nearly nothing.

    For each group: ``count``; ``sum`` correctly rounded (``math.fsum``); ``min``; ``max``; every
    requested percentile by nearest rank (``nearest_rank``), omitted when it has no value; and the
    group's ``Sketch`` with accuracy ``alpha``, equal to ``Sketch.from_values`` of its values.
    Raises ValueError for NaN or infinite values, codes outside ``[0, n_groups)``, mismatched
    lengths, a percentile outside (0, 100] or a repeated one, or alpha outside (0, 1).
    """
    grouped = GroupedValues(values, group_codes, n_groups, percentiles, alpha)
    present = np.flatnonzero(grouped.sizes >= max(min_count, 1))
    out: list[GroupSummary | None] = [None] * n_groups
    for g, summary in zip(present.tolist(), grouped.summaries(present), strict=True):
        out[g] = summary
    return out


class GroupedValues:
    """One window's values sorted by group, then by value: any group's summary, on demand.

    The constructor checks the input and does the work that spans every value (one sort, the
    histogram buckets); `summaries` then costs only its own groups, so a window's summaries
    can be made a slice of groups at a time while earlier ones are shipped, and each equals
    what ``summarize_groups`` gives for that group. `sizes[g]` is group g's number of values.
    Raises ValueError as ``summarize_groups`` does.
    """

    def __init__(
        self,
        values: npt.ArrayLike,
        group_codes: npt.ArrayLike,
        n_groups: int,
        percentiles: Sequence[float],
        alpha: float,
    ) -> None:
        alpha = _check_alpha(alpha)
        v = np.ascontiguousarray(values, dtype=np.float64).ravel()
        raw_codes = np.asarray(group_codes).ravel()
        if raw_codes.shape != v.shape:
            raise ValueError(f"{v.size} values but {raw_codes.size} group codes")
        if raw_codes.size and raw_codes.dtype.kind not in "iu":
            raise ValueError("group codes must be integers")
        codes = raw_codes.astype(np.int64)
        if n_groups < 0:
            raise ValueError("n_groups must be >= 0")
        fields = [percentile_field(p) for p in percentiles]
        if len(set(fields)) != len(fields):
            raise ValueError("a percentile is requested twice")
        if v.size and not np.isfinite(v).all():
            raise ValueError("values must be finite (found NaN or infinity)")
        if v.size and (int(codes.min()) < 0 or int(codes.max()) >= n_groups):
            raise ValueError(f"group codes must be in [0, {n_groups})")
        self.alpha = alpha
        self._log_gamma = log_gamma(alpha)
        self._fields = fields
        self._percentiles = [float(p) for p in percentiles]
        # -0.0 + 0.0 is +0.0: one zero, so min/max/sum cannot depend on the input order of zeros.
        v = v + 0.0
        order = _group_value_order(v, codes, n_groups) if v.size else codes
        self._sorted = v[order]
        self.sizes = np.bincount(codes, minlength=n_groups)
        self._ends = np.cumsum(self.sizes)
        self._starts = self._ends - self.sizes
        self._buckets = _GroupBuckets(self._sorted, codes[order], n_groups, self._log_gamma)

    def summaries(self, groups: npt.ArrayLike) -> list[GroupSummary]:
        """The summary of each group of `groups` (codes of groups holding values), in order."""
        present = np.asarray(groups, dtype=np.int64).ravel()
        if present.size and int(self.sizes[present].min()) < 1:
            raise ValueError("a group without values has no summary")
        sv = self._sorted
        p_starts = self._starts[present]
        p_ends = self._ends[present]
        p_sizes = self.sizes[present]
        mins = sv[p_starts].tolist()
        maxs = sv[p_ends - 1].tolist()
        pct_columns: list[list[float | None]] = []
        size_f = p_sizes.astype(np.float64)
        for p in self._percentiles:
            rank = (np.floor(size_f * p / 100.0 + 0.5) - 1).astype(np.int64)
            valid = (rank >= 0) & (rank < p_sizes)
            picked = sv[p_starts + np.where(valid, rank, 0)]
            column: list[float | None] = picked.tolist()
            for k in np.flatnonzero(~valid).tolist():
                column[k] = None
            pct_columns.append(column)
        sketches = self._buckets.sketches(present, p_sizes, self.alpha)
        fields = self._fields
        # Iterating a memoryview yields Python floats without copying the values into a list.
        flat = memoryview(sv.data)
        fsum = math.fsum
        rows = list(zip(*pct_columns, strict=True)) if pct_columns else [()] * present.size
        out: list[GroupSummary] = []
        for a, b, n, lo, hi, row, sketch in zip(
            p_starts.tolist(),
            p_ends.tolist(),
            p_sizes.tolist(),
            mins,
            maxs,
            rows,
            sketches,
            strict=True,
        ):
            if None in row:
                pct = {f: x for f, x in zip(fields, row, strict=True) if x is not None}
            else:
                pct = dict(zip(fields, row, strict=True))
            out.append(GroupSummary(n, fsum(flat[a:b]), lo, hi, pct, sketch))
        return out


class _GroupBuckets:
    """The histogram buckets of values sorted by (group, value), counted in one pass: any
    group's sketch is then two slices."""

    def __init__(
        self, sv: npt.NDArray[np.float64], sc: npt.NDArray[np.int64], n_groups: int, lg: float
    ) -> None:
        positive = sv > 0
        negative = sv < 0
        self._zeros = np.bincount(sc[~(positive | negative)], minlength=n_groups).tolist()
        self._log_gamma = lg
        _, self._p_idx, self._p_cnt, p_bounds = _runs(
            sc[positive], bucket_indexes(sv[positive], lg), n_groups
        )
        _, n_idx_fwd, n_cnt_fwd, n_bounds = _runs(
            sc[negative], bucket_indexes(-sv[negative], lg), n_groups
        )
        # Within a group negative values ascend, so their magnitudes' buckets descend;
        # reversing the whole run list makes each group's buckets ascend (groups then descend,
        # which slicing ignores).
        self._n_idx = n_idx_fwd[::-1]
        self._n_cnt = n_cnt_fwd[::-1]
        self._n_total = int(n_bounds[-1])
        self._p_b = p_bounds.tolist()
        self._n_b = n_bounds.tolist()

    def sketches(
        self, present: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64], alpha: float
    ) -> list[Sketch]:
        """One sketch per group of `present` (`sizes` its values)."""
        p_b, n_b, n_total, lg = self._p_b, self._n_b, self._n_total, self._log_gamma
        p_idx, p_cnt, n_idx, n_cnt = self._p_idx, self._p_cnt, self._n_idx, self._n_cnt
        zero_list = self._zeros
        make = Sketch._make
        out: list[Sketch] = []
        for g, n in zip(present.tolist(), sizes.tolist(), strict=True):
            pa, pb = p_b[g], p_b[g + 1]
            na, nb = n_b[g], n_b[g + 1]
            if na == nb:
                ni = nc = EMPTY
            else:
                ni = n_idx[n_total - nb : n_total - na]
                nc = n_cnt[n_total - nb : n_total - na]
            out.append(make(alpha, lg, n, zero_list[g], p_idx[pa:pb], p_cnt[pa:pb], ni, nc))
        return out


def _runs(
    group: npt.NDArray[np.int64], bucket: npt.NDArray[np.int64], n_groups: int
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]
]:
    """Runs of equal (group, bucket) pairs (adjacent: values are sorted within each group):
    each run's group, bucket and count, and where each group's runs start."""
    if group.size == 0:
        return EMPTY, EMPTY, EMPTY, np.zeros(n_groups + 1, dtype=np.int64)
    change = np.empty(group.size, dtype=bool)
    change[0] = True
    np.not_equal(group[1:], group[:-1], out=change[1:])
    change[1:] |= bucket[1:] != bucket[:-1]
    run_start = np.flatnonzero(change)
    run_count = np.diff(np.append(run_start, group.size)).astype(np.int64)
    run_group = group[run_start]
    run_bucket = bucket[run_start]
    bounds = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(run_group, minlength=n_groups), out=bounds[1:])
    run_bucket.flags.writeable = False
    run_count.flags.writeable = False
    return run_group, run_bucket, run_count, bounds


def apply_k_anonymity(
    summaries: Sequence[GroupSummary | None], min_group_events: int
) -> tuple[list[int], int]:
    """Which groups may be exported, and how many events the others hold.

    Returns ``(kept, suppressed_events)``: the indexes of groups with at least
    ``min_group_events`` events (ascending), and the total count of the non-empty groups below
    that. Raises ValueError if ``min_group_events`` < 1.
    """
    if min_group_events < 1:
        raise ValueError("min_group_events must be >= 1")
    kept: list[int] = []
    suppressed = 0
    for i, s in enumerate(summaries):
        if s is None:
            continue
        if s.count >= min_group_events:
            kept.append(i)
        else:
            suppressed += s.count
    return kept, suppressed
