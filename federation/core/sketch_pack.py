"""Many histograms of one accuracy packed as one ASCII string, for records the project keeps for
itself (what a rollup merged), never for a `sketch` field.

`pack` lays the histograms' counts and buckets end to end as little-endian int64 arrays,
compresses them (zlib) and writes base64; `unpack` is its exact inverse and refuses anything
`pack` would not write (a wrong length, counts that do not add up, buckets out of order or out
of range), so a damaged record is never read as histograms. Reading one string is a few numpy
calls, however many histograms it holds: far cheaper than decoding as many `sketch` texts.

Format: ``a=<repr(alpha)>;<base64 of zlib of int64 arrays>``, the arrays being, for n
histograms: counts, zero counts, positive store sizes, negative store sizes (n each), then the
positive indexes and counts, then the negative indexes and counts.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from federation.core._sketch_fast import index_bounds, log_gamma
from federation.core._sketch_reference import EMPTY, frozen
from federation.core.sketch import Sketch

__all__ = ["pack", "unpack"]

Int64Array = npt.NDArray[np.int64]
_DTYPE = np.dtype("<i8")


def pack(sketches: Sequence[Sketch]) -> str:
    """The histograms as one string; raises ValueError unless all have one alpha."""
    alphas = {s.alpha for s in sketches}
    if len(alphas) > 1:
        raise ValueError(f"cannot pack sketches of different accuracy: {sorted(alphas)}")
    alpha = alphas.pop() if alphas else 0.0
    parts: list[Int64Array] = [
        np.array([s.count for s in sketches], dtype=np.int64),
        np.array([s.zero_count for s in sketches], dtype=np.int64),
        np.array([s._pos_idx.size for s in sketches], dtype=np.int64),
        np.array([s._neg_idx.size for s in sketches], dtype=np.int64),
    ]
    for name in ("_pos_idx", "_pos_cnt", "_neg_idx", "_neg_cnt"):
        arrays = [getattr(s, name) for s in sketches]
        parts.append(np.concatenate(arrays) if arrays else EMPTY)
    raw = np.concatenate(parts).astype(_DTYPE).tobytes()
    return f"a={alpha!r};" + base64.b64encode(zlib.compress(raw, 1)).decode("ascii")


def unpack(text: str, n: int) -> list[Sketch]:
    """The `n` histograms `pack` wrote as `text`; ValueError for anything it would not write."""
    head, sep, body = text.partition(";")
    if not sep or not head.startswith("a="):
        raise ValueError("not a packed set of histograms")
    try:
        alpha = float(head[2:])
        values = np.frombuffer(zlib.decompress(base64.b64decode(body, validate=True)), _DTYPE)
    except (ValueError, binascii.Error, zlib.error) as exc:
        raise ValueError(f"not a packed set of histograms: {exc}") from None
    if n == 0:
        if values.size:
            raise ValueError("packed histograms: data for none")
        return []
    if not (0.0 < alpha < 1.0) or values.size < 4 * n:
        raise ValueError("packed histograms: bad accuracy or too short")
    values = values.astype(np.int64)
    counts, zeros, pos_sizes, neg_sizes = (values[k * n : (k + 1) * n] for k in range(4))
    if (pos_sizes < 0).any() or (neg_sizes < 0).any():
        raise ValueError("packed histograms: negative store size")
    n_pos, n_neg = int(pos_sizes.sum()), int(neg_sizes.sum())
    if values.size != 4 * n + 2 * (n_pos + n_neg):
        raise ValueError("packed histograms: wrong length")
    at = 4 * n
    pos_idx, pos_cnt = values[at : at + n_pos], values[at + n_pos : at + 2 * n_pos]
    at += 2 * n_pos
    neg_idx, neg_cnt = values[at : at + n_neg], values[at + n_neg :]
    lg = log_gamma(alpha)
    low, high = index_bounds(lg)
    pos_bounds = _bounds(pos_idx, pos_cnt, pos_sizes, low, high)
    neg_bounds = _bounds(neg_idx, neg_cnt, neg_sizes, low, high)
    sums = zeros.astype(np.float64)
    for sizes, cnt in ((pos_sizes, pos_cnt), (neg_sizes, neg_cnt)):
        # float64 sums are exact below 2**53, far above any count of values held.
        sums += np.bincount(np.repeat(np.arange(n), sizes), weights=cnt, minlength=n)
    if (zeros < 0).any() or not np.array_equal(sums, counts.astype(np.float64)):
        raise ValueError("packed histograms: counts do not add up")
    pi, pc, ni, nc = (frozen(a.copy()) for a in (pos_idx, pos_cnt, neg_idx, neg_cnt))
    pb, nb = pos_bounds.tolist(), neg_bounds.tolist()
    make = Sketch._make
    return [
        make(
            alpha, lg, c, z,
            pi[pb[k] : pb[k + 1]] if pb[k + 1] > pb[k] else EMPTY,
            pc[pb[k] : pb[k + 1]] if pb[k + 1] > pb[k] else EMPTY,
            ni[nb[k] : nb[k + 1]] if nb[k + 1] > nb[k] else EMPTY,
            nc[nb[k] : nb[k + 1]] if nb[k + 1] > nb[k] else EMPTY,
        )
        for k, (c, z) in enumerate(zip(counts.tolist(), zeros.tolist(), strict=True))
    ]  # fmt: skip


def _bounds(idx: Int64Array, cnt: Int64Array, sizes: Int64Array, low: int, high: int) -> Int64Array:
    """Each histogram's slice bounds in a store; ValueError unless every count is positive
    and every histogram's indexes strictly increase within [low, high]."""
    bounds = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    if idx.size:
        if (cnt <= 0).any() or idx.min() < low or idx.max() > high:
            raise ValueError("packed histograms: a bucket count or index out of range")
        rising = np.diff(idx) > 0
        starts = np.zeros(idx.size, dtype=bool)
        starts[bounds[:-1][sizes > 0]] = True
        if not (rising | starts[1:]).all():
            raise ValueError("packed histograms: bucket indexes out of order")
    return bounds
