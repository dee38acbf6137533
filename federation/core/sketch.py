"""A mergeable histogram with relative accuracy alpha, and its text encoding.

Positive values fall into log-spaced buckets: with gamma = (1 + alpha) / (1 - alpha), bucket ``i``
holds the values in ``(gamma**(i-1), gamma**i]``, ``i = ceil(log(v) / log(gamma))``. Exact zeros
have their own count and negative values go to a mirrored store keyed by ``|v|``. Every value in
bucket ``i`` lies within relative error alpha of the bucket's representative
``2 * gamma**i / (gamma + 1)``, so a quantile read from the histogram is within alpha of the exact
nearest-rank value. Counts are integers, so merging histograms (over DCs, windows, days) is exact.

Encoding (the ``sketch`` string field of a summary point)::

    v1:a=<alpha>:n=<count>[:z=<zeros>][:p=<first index>,<body>][:m=<first index>,<body>]

``a`` is ``repr(alpha)``; ``n`` the total count; ``z`` the zero count (omitted when 0); ``p`` the
positive store and ``m`` the negative store (by ``|v|``), each omitted when empty. A store's body
walks its buckets upwards from the first index as a string of tokens; token ``t`` is either a
bucket (``t`` even: count ``t // 2 + 1`` at the current index, then move one up) or a gap (``t``
odd: skip ``t // 2 + 1`` empty buckets). A body starts and ends with a bucket and never has two
gaps in a row. Each token is a little-endian base-32 varint written in the URL-safe base64
alphabet: the last digit of a number is one of ``A``-``Z``, ``a``-``f`` (values 0-31), the digits
before it are one of ``g``-``z``, ``0``-``9``, ``-``, ``_`` (values 0-31 again, "more follows").
Counts up to 16 and gaps up to 16 cost one character. The encoding is canonical: one histogram
has exactly one encoding, and the decoder rejects every other spelling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from federation.core._sketch_fast import (
    FLOAT_MAX,
    index_bounds,
    log_gamma,
    read_batch,
    read_one,
    read_total,
)
from federation.core._sketch_reference import EMPTY, ENCODING_VERSION, frozen, reference_parts
from federation.core._sketch_sums import sums_by_owner
from federation.core._sketch_write import Stores, encode_body, write_many
from federation.errors import SketchDecodeError

__all__ = [
    "ENCODING_VERSION",
    "Sketch",
    "bucket_indexes",
    "decode_many",
    "decode_sums",
    "encode_many",
    "merge_all",
    "merge_by_owner",
    "subtract",
    "total_count",
]


Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]

# Sums of bucket counts are done in float64 by np.bincount; they are exact below 2**53.
_EXACT_FLOAT_INT: Final = 1 << 53


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return alpha


def bucket_indexes(magnitudes: Float64Array, log_gamma: float) -> Int64Array:
    """Bucket index ``ceil(log(v) / log_gamma)`` of every (positive, finite) magnitude.

    Every histogram in this package buckets through this one function, so that a value lands in
    the same bucket whichever path (``Sketch.from_values``, ``summarize_groups``) counted it.
    """
    return np.ceil(np.log(magnitudes) / log_gamma).astype(np.int64)


def _count_buckets(idx: Int64Array) -> tuple[Int64Array, Int64Array]:
    """Sorted distinct indexes and their counts, for an unsorted index array."""
    if idx.size == 0:
        return EMPTY, EMPTY
    lo = int(idx.min())
    span = int(idx.max()) - lo + 1
    if span <= 4 * idx.size + 4096:
        dense = np.bincount(idx - lo, minlength=span)
        nz = np.flatnonzero(dense)
        return frozen((nz + lo).astype(np.int64)), frozen(dense[nz].astype(np.int64))
    uniq, counts = np.unique(idx, return_counts=True)
    return frozen(uniq.astype(np.int64)), frozen(counts.astype(np.int64))


def _sum_buckets(
    indexes: list[Int64Array], counts: list[Int64Array], total: int
) -> tuple[Int64Array, Int64Array]:
    """Add several sparse stores into one, exactly."""
    indexes = [a for a in indexes if a.size]
    counts = [c for c in counts if c.size]
    if not indexes:
        return EMPTY, EMPTY
    if len(indexes) == 1:
        return indexes[0], counts[0]
    idx = np.concatenate(indexes)
    cnt = np.concatenate(counts)
    lo = int(idx.min())
    span = int(idx.max()) - lo + 1
    if total < _EXACT_FLOAT_INT and span <= 4 * idx.size + 4096:
        dense = np.bincount(idx - lo, weights=cnt, minlength=span)
        nz = np.flatnonzero(dense)
        return frozen((nz + lo).astype(np.int64)), frozen(dense[nz].astype(np.int64))
    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    cnt = cnt[order]
    starts = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
    return frozen(idx[starts]), frozen(np.add.reduceat(cnt, starts))


class Sketch:
    """An immutable log-bucketed histogram of float64 values with relative accuracy ``alpha``."""

    __slots__ = (
        "_log_gamma",
        "_neg_cnt",
        "_neg_idx",
        "_pos_cnt",
        "_pos_idx",
        "alpha",
        "count",
        "zero_count",
    )

    alpha: float
    count: int
    zero_count: int
    _log_gamma: float
    _pos_idx: Int64Array
    _pos_cnt: Int64Array
    _neg_idx: Int64Array
    _neg_cnt: Int64Array

    def __init__(self, alpha: float) -> None:
        """An empty histogram; raises ValueError unless 0 < alpha < 1."""
        self.alpha = _check_alpha(alpha)
        self._log_gamma = log_gamma(self.alpha)
        self.count = 0
        self.zero_count = 0
        self._pos_idx = self._pos_cnt = self._neg_idx = self._neg_cnt = EMPTY

    @classmethod
    def _make(
        cls,
        alpha: float,
        log_gamma: float,
        count: int,
        zero_count: int,
        pos_idx: Int64Array,
        pos_cnt: Int64Array,
        neg_idx: Int64Array,
        neg_cnt: Int64Array,
    ) -> Sketch:
        # Trusted constructor: arrays sorted by index, counts positive, read-only, and
        # `count` their total; skips validation because the hot paths build many of these.
        s = object.__new__(cls)
        s.alpha = alpha
        s._log_gamma = log_gamma
        s.count = count
        s.zero_count = zero_count
        s._pos_idx = pos_idx
        s._pos_cnt = pos_cnt
        s._neg_idx = neg_idx
        s._neg_cnt = neg_cnt
        return s

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_values(cls, values: npt.ArrayLike, alpha: float) -> Sketch:
        """The histogram of every value (any shape, read as float64), in one vectorised pass.

        Raises ValueError if a value is NaN or infinite, or alpha is not in (0, 1).
        """
        alpha = _check_alpha(alpha)
        lg = log_gamma(alpha)
        v = np.asarray(values, dtype=np.float64).ravel()
        if not np.isfinite(v).all():
            raise ValueError("sketch values must be finite (found NaN or infinity)")
        positive = v > 0
        n_pos = int(np.count_nonzero(positive))
        pos_idx, pos_cnt = _count_buckets(bucket_indexes(v if n_pos == v.size else v[positive], lg))
        neg_idx = neg_cnt = EMPTY
        n_neg = 0
        if n_pos < v.size:
            negative = v < 0
            n_neg = int(np.count_nonzero(negative))
            if n_neg:
                neg_idx, neg_cnt = _count_buckets(bucket_indexes(-v[negative], lg))
        zeros = int(v.size) - n_pos - n_neg
        return cls._make(alpha, lg, int(v.size), zeros, pos_idx, pos_cnt, neg_idx, neg_cnt)

    @classmethod
    def from_buckets(
        cls,
        alpha: float,
        positive: Mapping[int, int] | None = None,
        negative: Mapping[int, int] | None = None,
        zero_count: int = 0,
    ) -> Sketch:
        """A histogram with the given bucket counts (index -> count; negative store by ``|v|``).

        Zero counts are dropped; raises ValueError for a negative count or an index that no
        finite float64 reaches.
        """
        alpha = _check_alpha(alpha)
        lg = log_gamma(alpha)
        low, high = index_bounds(lg)
        if zero_count < 0:
            raise ValueError("zero_count must be >= 0")

        def store(buckets: Mapping[int, int] | None) -> tuple[Int64Array, Int64Array]:
            items = sorted((int(i), int(c)) for i, c in (buckets or {}).items() if c != 0)
            if any(c < 0 for _, c in items):
                raise ValueError("bucket counts must be >= 0")
            if items and not (low <= items[0][0] and items[-1][0] <= high):
                raise ValueError(f"bucket index out of range [{low}, {high}] for alpha {alpha}")
            return (
                frozen(np.array([i for i, _ in items], dtype=np.int64)),
                frozen(np.array([c for _, c in items], dtype=np.int64)),
            )

        pi, pc = store(positive)
        ni, nc = store(negative)
        count = int(zero_count) + sum(pc.tolist()) + sum(nc.tolist())
        return cls._make(alpha, lg, count, int(zero_count), pi, pc, ni, nc)

    # -- inspection -------------------------------------------------------------------------

    def positive_buckets(self) -> dict[int, int]:
        """Non-empty positive buckets, index -> count, in increasing index order."""
        return dict(zip(self._pos_idx.tolist(), self._pos_cnt.tolist(), strict=True))

    def negative_buckets(self) -> dict[int, int]:
        """Non-empty negative buckets (keyed by the index of ``|v|``) -> count, increasing index."""
        return dict(zip(self._neg_idx.tolist(), self._neg_cnt.tolist(), strict=True))

    def representative(self, index: int) -> float:
        """The positive value ``2 * gamma**index / (gamma + 1)`` that stands for bucket ``index``.

        Every value of the bucket is within relative error alpha of it (up to float rounding);
        clamped to the largest finite float for the topmost bucket.
        """
        # One exp of the summed logs, so gamma**index may pass the float range while the
        # representative itself does not.
        log_factor = math.log(2.0 / (math.exp(self._log_gamma) + 1.0))
        try:
            return min(math.exp(index * self._log_gamma + log_factor), FLOAT_MAX)
        except OverflowError:
            return FLOAT_MAX

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return (
            self.alpha == other.alpha
            and self.count == other.count
            and self.zero_count == other.zero_count
            and np.array_equal(self._pos_idx, other._pos_idx)
            and np.array_equal(self._pos_cnt, other._pos_cnt)
            and np.array_equal(self._neg_idx, other._neg_idx)
            and np.array_equal(self._neg_cnt, other._neg_cnt)
        )

    def __hash__(self) -> int:
        return hash(self.encode())

    def __repr__(self) -> str:
        return (
            f"Sketch(alpha={self.alpha!r}, count={self.count}, zeros={self.zero_count}, "
            f"buckets={self._pos_idx.size}+{self._neg_idx.size})"
        )

    # -- merging ----------------------------------------------------------------------------

    def merge(self, other: Sketch) -> Sketch:
        """The histogram of both inputs' values: counts added exactly; raises ValueError if the
        two were built with different alpha."""
        return merge_all((self, other))

    # -- queries ----------------------------------------------------------------------------

    def quantile(self, p: float) -> float | None:
        """The nearest-rank p-th percentile, within relative error alpha of the exact one.

        Rank index is ``floor(N * p / 100 + 0.5) - 1`` over the sorted values, as InfluxQL's
        ``percentile()``; None when that index is outside ``[0, N)`` (including N == 0).
        The result is 0.0 for a zero, the negated representative for a negative value.
        """
        p = float(p)
        if math.isnan(p):
            raise ValueError("percentile must not be NaN")
        n = self.count
        rank = math.floor(float(n) * p / 100.0 + 0.5) - 1
        if rank < 0 or rank >= n:
            return None
        n_neg = n - self.zero_count - int(self._pos_cnt.sum())
        if rank < n_neg:
            # Sorted order visits negative buckets from the largest magnitude down.
            cum = np.cumsum(self._neg_cnt[::-1])
            k = int(np.searchsorted(cum, rank, side="right"))
            return -self.representative(int(self._neg_idx[::-1][k]))
        rank -= n_neg
        if rank < self.zero_count:
            return 0.0
        rank -= self.zero_count
        cum = np.cumsum(self._pos_cnt)
        k = int(np.searchsorted(cum, rank, side="right"))
        return self.representative(int(self._pos_idx[k]))

    def count_at_most(self, threshold: float) -> tuple[int, int]:
        """Bounds ``(lower, upper)`` on how many values are ``<= threshold``.

        Values in the one bucket that straddles the threshold are counted in ``upper`` only; every
        other bucket is certainly on one side, so the exact count lies within the bounds.
        """
        t = float(threshold)
        if math.isnan(t):
            raise ValueError("threshold must not be NaN")
        n_pos = int(self._pos_cnt.sum())
        n_neg = self.count - self.zero_count - n_pos
        if t == math.inf:
            return self.count, self.count
        if t == -math.inf:
            return 0, 0
        if t == 0.0:
            exact = n_neg + self.zero_count
            return exact, exact
        k = int(bucket_indexes(np.array([abs(t)]), self._log_gamma)[0])
        if t > 0:
            below = int(self._pos_cnt[: np.searchsorted(self._pos_idx, k, side="left")].sum())
            straddle = int(self._pos_cnt[self._pos_idx == k].sum())
            lower = n_neg + self.zero_count + below
        else:
            # A negative value is <= t when its magnitude is >= |t|.
            above = int(self._neg_cnt[np.searchsorted(self._neg_idx, k, side="right") :].sum())
            straddle = int(self._neg_cnt[self._neg_idx == k].sum())
            lower = above
        return lower, lower + straddle

    def fraction_at_most(self, threshold: float) -> tuple[float, float] | None:
        """Bounds ``(lower, upper)`` on the share of values ``<= threshold`` (SLA attainment).

        The exact share lies within the bounds; None for an empty histogram.
        """
        if self.count == 0:
            return None
        lower, upper = self.count_at_most(threshold)
        return lower / self.count, upper / self.count

    # -- encoding ---------------------------------------------------------------------------

    def encode(self) -> str:
        """The canonical text encoding (see the module docstring).

        Equal histograms give the same string byte for byte, however they were built or merged.
        """
        parts = [ENCODING_VERSION, f"a={self.alpha!r}", f"n={self.count}"]
        if self.zero_count:
            parts.append(f"z={self.zero_count}")
        if self._pos_idx.size:
            parts.append(f"p={int(self._pos_idx[0])},{encode_body(self._pos_idx, self._pos_cnt)}")
        if self._neg_idx.size:
            parts.append(f"m={int(self._neg_idx[0])},{encode_body(self._neg_idx, self._neg_cnt)}")
        return ":".join(parts)

    @classmethod
    def decode(cls, text: str, expected_alpha: float | None = None) -> Sketch:
        """The histogram a string from ``encode`` describes; exact inverse of ``encode``.

        Raises SketchDecodeError (naming the problem and at most a short prefix of the text) for
        anything ``encode`` would not produce: malformed text, an unknown version, zero or
        negative counts, a total that differs from ``n``, or alpha != ``expected_alpha``.
        """
        parts = read_one(text, expected_alpha)
        if parts is None:
            # Not plainly canonical: the reference decoder gives the verdict and explains it.
            return _decode(text, expected_alpha)
        return cls._make(*parts)


def encode_many(sketches: Sequence[Sketch]) -> list[str]:
    """``[s.encode() for s in sketches]``, byte for byte, written together in one pass.

    Much cheaper per histogram for the many short histograms of a window or a rollup.
    """
    if len(sketches) < 2:
        return [s.encode() for s in sketches]
    alpha_texts = {a: repr(a) for a in {s.alpha for s in sketches}}
    texts = write_many(
        [alpha_texts[s.alpha] for s in sketches],
        [s.count for s in sketches],
        [s.zero_count for s in sketches],
        _stores([s._pos_idx for s in sketches], [s._pos_cnt for s in sketches]),
        _stores([s._neg_idx for s in sketches], [s._neg_cnt for s in sketches]),
    )
    return [s.encode() for s in sketches] if texts is None else texts


def _stores(indexes: list[Int64Array], counts: list[Int64Array]) -> Stores:
    bounds = np.zeros(len(indexes) + 1, dtype=np.int64)
    np.cumsum([a.size for a in indexes], out=bounds[1:])
    if not bounds[-1]:
        return Stores(EMPTY, EMPTY, bounds)
    return Stores(np.concatenate(indexes), np.concatenate(counts), bounds)


def decode_many(texts: Iterable[object], expected_alpha: float | None = None) -> list[Sketch]:
    """``[Sketch.decode(t, expected_alpha) for t in texts]``, decoded together in one pass.

    Same results and same SketchDecodeError (for the first text that does not decode) as
    decoding one by one; much cheaper per text for batches of short strings.
    """
    items = list(texts)
    batch = read_batch(items, expected_alpha) if len(items) > 1 else None
    if batch is None:
        return [Sketch.decode(t, expected_alpha) for t in items]  # type: ignore[arg-type]
    make = Sketch._make
    alpha, lg = batch.alpha, batch.log_gamma
    pi, pc, pb = batch.pos_idx, batch.pos_cnt, batch.pos_bounds
    ni, nc, nb = batch.neg_idx, batch.neg_cnt, batch.neg_bounds
    out: list[Sketch] = []
    for k, (count, zeros) in enumerate(zip(batch.counts, batch.zeros, strict=True)):
        p0, p1, n0, n1 = pb[k], pb[k + 1], nb[k], nb[k + 1]
        out.append(
            make(
                alpha, lg, count, zeros,
                pi[p0:p1] if p1 > p0 else EMPTY, pc[p0:p1] if p1 > p0 else EMPTY,
                ni[n0:n1] if n1 > n0 else EMPTY, nc[n0:n1] if n1 > n0 else EMPTY,
            )
        )  # fmt: skip
    return out


def decode_sums(
    texts: list[object],
    owners: Sequence[int],
    n_owners: int,
    signs: Sequence[int] | None = None,
) -> list[Sketch] | None:
    """For each owner ``o`` in ``range(n_owners)``, ``merge_all`` of the histograms of the texts
    it owns (``owners[i]`` owns ``texts[i]``; every owner owns one at least), decoded and added
    in one pass; None when a text is not plainly canonical or their accuracies differ (then
    decode them one by one, for the verdict).

    With `signs` (+1 or -1 per text), a text whose sign is -1 is taken away instead, as
    `subtract` does: raises ValueError when an owner would hold less than nothing anywhere.
    """
    batch = read_batch(texts, None) if len(texts) > 1 else None
    if batch is None:
        return None
    parts = sums_by_owner(
        batch.counts, batch.zeros, (batch.pos_idx, batch.pos_cnt, batch.pos_bounds),
        (batch.neg_idx, batch.neg_cnt, batch.neg_bounds), owners, n_owners, signs,
    )  # fmt: skip
    return [Sketch._make(batch.alpha, batch.log_gamma, *p) for p in parts]


def merge_by_owner(
    sketches: Sequence[Sketch],
    owners: Sequence[int],
    n_owners: int,
    signs: Sequence[int] | None = None,
) -> list[Sketch]:
    """For each owner ``o`` in ``range(n_owners)``, ``merge_all`` of the histograms it owns
    (``owners[i]`` owns ``sketches[i]``; every owner owns one at least), added in one pass;
    with `signs` (+1 or -1 each), one whose sign is -1 is taken away, as `subtract` does.

    Raises ValueError when accuracies differ or an owner would hold less than nothing.
    """
    alphas = {s.alpha for s in sketches}
    if len(alphas) != 1:
        raise ValueError(f"cannot merge sketches of different accuracy: {sorted(alphas)}")
    first = sketches[0]
    parts = sums_by_owner(
        [s.count for s in sketches], [s.zero_count for s in sketches],
        _stores([s._pos_idx for s in sketches], [s._pos_cnt for s in sketches]),
        _stores([s._neg_idx for s in sketches], [s._neg_cnt for s in sketches]),
        owners, n_owners, signs,
    )  # fmt: skip
    return [Sketch._make(first.alpha, first._log_gamma, *p) for p in parts]


def total_count(text: object, expected_alpha: float | None = None) -> int:
    """``Sketch.decode(text, expected_alpha).count`` without building the histogram.

    Raises SketchDecodeError exactly when ``Sketch.decode`` does (the gateway's check that a
    summary's ``sketch`` holds ``count`` values).
    """
    total = read_total(text, expected_alpha)
    if total is None:
        return _decode(text, expected_alpha).count  # type: ignore[arg-type]
    return total


def total_counts(texts: Sequence[object], expected_alpha: float | None = None) -> list[int | None]:
    """For each text, ``total_count(text, expected_alpha)``, or None where that would raise.

    Checks many strings in one vectorised pass when they are all plainly canonical (what a
    gateway receives from well-behaved senders); otherwise falls back to one string at a time.
    """
    batch = read_batch(list(texts), expected_alpha) if len(texts) > 1 else None
    if batch is not None:
        return list(batch.counts)
    totals: list[int | None] = []
    for text in texts:
        try:
            totals.append(total_count(text, expected_alpha))
        except SketchDecodeError:
            totals.append(None)
    return totals


def merge_all(sketches: Iterable[Sketch], alpha: float | None = None) -> Sketch:
    """The histogram of all inputs' values, counts added exactly, in one vectorised pass.

    The result does not depend on the order of the inputs. With no inputs it is the empty
    histogram of ``alpha`` (ValueError if alpha is not given then); raises ValueError if inputs
    (or ``alpha``) disagree on alpha.
    """
    items = list(sketches)
    if not items:
        if alpha is None:
            raise ValueError("merge_all of no sketches needs alpha")
        return Sketch(alpha)
    first = items[0].alpha if alpha is None else _check_alpha(alpha)
    alphas = {s.alpha for s in items}
    if alphas != {first}:
        raise ValueError(f"cannot merge sketches of different accuracy: {sorted(alphas | {first})}")
    lg = log_gamma(first)
    count = sum(s.count for s in items)
    zeros = sum(s.zero_count for s in items)
    pos_idx, pos_cnt = _sum_buckets([s._pos_idx for s in items], [s._pos_cnt for s in items], count)
    neg_idx, neg_cnt = _sum_buckets([s._neg_idx for s in items], [s._neg_cnt for s in items], count)
    return Sketch._make(first, lg, count, zeros, pos_idx, pos_cnt, neg_idx, neg_cnt)


def subtract(total: Sketch, part: Sketch) -> Sketch:
    """The histogram of `total`'s values without `part`'s: counts taken away exactly, so
    ``subtract(merge_all([a, b]), b) == a``.

    Raises ValueError when `part` is not within `total` (a bucket, zero or total count larger
    than `total`'s) or the two differ in alpha.
    """
    if total.alpha != part.alpha:
        raise ValueError(
            f"cannot subtract sketches of different accuracy: {total.alpha}, {part.alpha}"
        )
    count = total.count - part.count
    zeros = total.zero_count - part.zero_count
    if count < 0 or zeros < 0:
        raise ValueError("the part holds more values than the total")
    stores = []
    for idx, cnt, p_idx, p_cnt in (
        (total._pos_idx, total._pos_cnt, part._pos_idx, part._pos_cnt),
        (total._neg_idx, total._neg_cnt, part._neg_idx, part._neg_cnt),
    ):
        at = np.searchsorted(idx, p_idx)
        found = at < idx.size
        found[found] = idx[at[found]] == p_idx[found]
        if not found.all():
            raise ValueError("the part has a bucket the total lacks")
        left = cnt.copy()
        left[at] -= p_cnt
        if (left < 0).any():
            raise ValueError("the part holds more values in a bucket than the total")
        keep = left > 0
        stores.append((frozen(idx[keep]), frozen(left[keep])))
    (pi, pc), (ni, nc) = stores
    return Sketch._make(total.alpha, total._log_gamma, count, zeros, pi, pc, ni, nc)


def _decode(text: str, expected_alpha: float | None) -> Sketch:
    """The reference decoder: the histogram, or SketchDecodeError explaining the refusal."""
    return Sketch._make(*reference_parts(text, expected_alpha))
