"""A fast writer of the canonical ``v1:`` histogram text (format: `federation.core.sketch`).

`Sketch.encode` is the reference writer: a few numpy calls per histogram, whose fixed cost
dominates for the short histograms of one group of one window (tens of thousands per window).
`write_many` writes many histograms in one pass: every body's tokens and characters are
computed for all histograms at once, and only the header and one slice of a shared string are
left per histogram. It answers None for anything outside what it handles (counts or gaps too
large for its digit arithmetic), so the caller falls back to the reference writer: narrower,
never broader. Property tests in ``tests/test_sketch.py`` hold its strings equal, byte for byte,
to the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from federation.core._sketch_fast import ALPHABET, MAX_DIGITS

Int64Array = npt.NDArray[np.int64]

_DIGIT_CHAR: Final = np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)
# Tokens below this stay inside MAX_DIGITS base-32 digits and far from int64 overflow.
_TOKEN_LIMIT: Final = 1 << (5 * MAX_DIGITS - 1)


class Stores(NamedTuple):
    """One store (positive or negative) of many histograms, concatenated.

    Histogram ``k`` owns ``indexes[bounds[k]:bounds[k + 1]]`` (ascending bucket indexes) and
    the matching ``counts`` slice (each >= 1); ``bounds`` has one more entry than there are
    histograms.
    """

    indexes: Int64Array
    counts: Int64Array
    bounds: Int64Array


def _bodies(stores: Stores) -> tuple[list[int], list[str]] | None:
    """Each histogram's first index and body text ("" for an empty store), or None when a
    count or gap is past what this writer handles."""
    index, count, bounds = stores
    n_hist = bounds.size - 1
    if index.size == 0:
        return [0] * n_hist, [""] * n_hist
    if int(count.max()) >= _TOKEN_LIMIT // 2 or int(count.min()) < 1:
        return None
    sizes = np.diff(bounds)
    first = np.zeros(index.size, dtype=bool)
    first[bounds[:-1][sizes > 0]] = True
    # Per bucket: an optional gap token (skip step - 1 empty buckets) then its count token.
    step = np.empty(index.size, dtype=np.int64)
    step[0] = 1
    np.subtract(index[1:], index[:-1], out=step[1:])
    has_gap = ~first & (step > 1)
    if has_gap.any() and int(step[has_gap].max()) >= _TOKEN_LIMIT // 2:
        return None
    count_at = np.arange(index.size) + np.cumsum(has_gap)
    tokens = np.empty(int(count_at[-1]) + 1, dtype=np.int64)
    tokens[count_at] = 2 * (count - 1)
    tokens[count_at[has_gap] - 1] = 2 * (step[has_gap] - 2) + 1
    # Little-endian base 32: digit k of a token is `(token >> 5k) & 31`, written from the
    # "more follows" half of the alphabet (+32) unless it is the token's last digit.
    digits = np.ones(tokens.size, dtype=np.int64)
    largest = int(tokens.max())
    threshold = 32
    while threshold <= largest:
        digits += tokens >= threshold
        threshold <<= 5
    ends = np.cumsum(digits)
    starts = ends - digits
    chars = np.empty(int(ends[-1]), dtype=np.uint8)
    chars[starts] = _DIGIT_CHAR[(tokens & 31) + 32 * (digits > 1)]
    for k in range(1, int(digits.max())):
        live = np.flatnonzero(digits > k)
        value = (tokens[live] >> (5 * k)) & 31
        chars[starts[live] + k] = _DIGIT_CHAR[value + 32 * (digits[live] > k + 1)]
    text = chars.tobytes().decode("ascii")
    # A body runs from its first bucket's count token to its last bucket's.
    has = sizes > 0
    lo = np.zeros(n_hist, dtype=np.int64)
    hi = np.zeros(n_hist, dtype=np.int64)
    lo[has] = starts[count_at[bounds[:-1][has]]]
    hi[has] = ends[count_at[bounds[1:][has] - 1]]
    firsts = np.zeros(n_hist, dtype=np.int64)
    firsts[has] = index[bounds[:-1][has]]
    return firsts.tolist(), [text[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]


def write_many(
    alpha_texts: Sequence[str],
    counts: Sequence[int],
    zeros: Sequence[int],
    positive: Stores,
    negative: Stores,
) -> list[str] | None:
    """The canonical text of each histogram (``alpha_texts[k]`` is ``repr`` of its alpha), or
    None when one of them is outside what this writer handles."""
    pos = _bodies(positive)
    neg = _bodies(negative)
    if pos is None or neg is None:
        return None
    out: list[str] = []
    for a, n, z, pf, pb, nf, nb in zip(alpha_texts, counts, zeros, *pos, *neg, strict=True):
        text = f"v1:a={a}:n={n}"
        if z:
            text += f":z={z}"
        if pb:
            text += f":p={pf},{pb}"
        if nb:
            text += f":m={nf},{nb}"
        out.append(text)
    return out


# The alphabet, digit table and limits are the fast readers' (`federation.core._sketch_fast`), so the
# reference decoder and the fast ones read one definition of the format.
_ALPHABET: Final = ALPHABET.encode("ascii")


def _token_strings() -> list[str]:
    # Tokens below 1024 (counts and gaps up to 512) are looked up instead of computed.
    table = []
    for t in range(1024):
        if t < 32:
            table.append(chr(_ALPHABET[t]))
        else:
            table.append(chr(_ALPHABET[32 + (t & 31)]) + chr(_ALPHABET[t >> 5]))
    return table


_TOKEN_STR: Final = _token_strings()


def _varint(t: int) -> str:
    digits = []
    while t >= 32:
        digits.append(chr(_ALPHABET[32 + (t & 31)]))
        t >>= 5
    digits.append(chr(_ALPHABET[t]))
    return "".join(digits)


def encode_body(idx: Int64Array, cnt: Int64Array) -> str:
    """A store's body: its buckets from the first index upwards, as tokens (see `sketch`)."""
    tokens = np.empty(2 * idx.size - 1, dtype=np.int64)
    tokens[0::2] = 2 * (cnt - 1)
    tokens[1::2] = 2 * (np.diff(idx) - 2) + 1
    # A gap of one (adjacent buckets) yields token -1 and means "no gap token".
    tokens = tokens[tokens >= 0]
    table = _TOKEN_STR
    limit = len(table)
    return "".join(table[t] if t < limit else _varint(t) for t in tokens.tolist())
