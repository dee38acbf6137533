"""Fast readers of the canonical ``v1:`` histogram text (format: `federation.core.sketch`).

`federation.core._sketch_reference` holds the reference decoder: vectorised with numpy and explaining every
refusal. Its fixed cost per call (a few dozen numpy calls) dominates for the short strings of
hourly windows and for reports that read hundreds of thousands of them. The readers here handle
only what is plainly canonical and answer None for anything else, so the caller asks the
reference decoder for the verdict and its message. They are narrower than the reference, never
broader: whatever they accept, the reference accepts with the same buckets and count (property
tests in ``tests/test_sketch.py`` hold them to that).

- `read_one`: one string in pure Python (no numpy until the result arrays are built);
- `read_total`: the total count of one string, without building any array (the gateway);
- `read_batch`: many strings of one accuracy, all headers in one pattern pass, all bodies in
  one numpy pass.
"""

from __future__ import annotations

import math
import re
from operator import itemgetter
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]

ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_LAST: Final = ALPHABET[:32]
_MORE: Final = ALPHABET[32:]
_INVALID_DIGIT: Final = 255
DECODE_TABLE: Final = bytes(
    ALPHABET.index(chr(b)) if chr(b) in ALPHABET else _INVALID_DIGIT for b in range(256)
)
MAX_DIGITS: Final = 12
MAX_TEXT: Final = 1 << 22
_MIN_POSITIVE: Final = 5e-324
FLOAT_MAX: Final = 1.7976931348623157e308
# Tokens of at most 8 digits (40 bits) keep every batch sum far inside int64.
_BATCH_MAX_DIGITS: Final = 8

_TOKEN = re.compile(f"[{re.escape(_MORE)}]*[{_LAST}]")
# The headers of many strings, one per line of their newline-joined text: what `read_header`
# accepts, narrowed to counts and first indexes of at most 18 digits (within int64), no "-0",
# and bodies of the alphabet only. Groups: alpha text, n, z, then first index and body of p and m.
_UINT = "0|[1-9][0-9]{0,17}"
_FIRST = "0|-?[1-9][0-9]{0,17}"
_HEADERS = re.compile(
    rf"^v1:a=([^:\n]*):n=({_UINT})(?::z=([1-9][0-9]{{0,17}}))?"
    rf"(?::p=({_FIRST}),([A-Za-z0-9_-]+))?(?::m=({_FIRST}),([A-Za-z0-9_-]+))?$",
    re.MULTILINE,
)


def log_gamma(alpha: float) -> float:
    """``log(gamma)`` with ``gamma = (1 + alpha) / (1 - alpha)``."""
    return math.log((1.0 + alpha) / (1.0 - alpha))


def index_bounds(lg: float) -> tuple[int, int]:
    """Bucket indexes a finite float64 can reach, with one bucket of slack for rounding."""
    low = math.ceil(math.log(_MIN_POSITIVE) / lg) - 1
    high = math.ceil(math.log(FLOAT_MAX) / lg) + 1
    return low, high


def _token_values() -> dict[str, int]:
    # Canonical tokens of one or two digits (counts and gaps up to 512); a two-digit token whose
    # last digit is zero is not canonical and so is absent.
    table = {char: value for value, char in enumerate(_LAST)}
    for low, more in enumerate(_MORE):
        for high, last in enumerate(_LAST):
            if high:
                table[more + last] = low | high << 5
    return table


_VALUE: Final = _token_values()
# Per token: the values it counts (0 for a gap), the buckets it spans, and its kind.
_COUNT: Final = {k: 0 if v & 1 else (v >> 1) + 1 for k, v in _VALUE.items()}
_SPAN: Final = {k: (v >> 1) + 1 if v & 1 else 1 for k, v in _VALUE.items()}
_KIND: Final = {k: "g" if v & 1 else "b" for k, v in _VALUE.items()}


def _long_token(token: str) -> int | None:
    """The value of a canonical token of 3 to MAX_DIGITS digits, else None."""
    if len(token) > MAX_DIGITS or token[-1] == "A":
        return None
    value = 0
    for shift, char in enumerate(token):
        value |= (ALPHABET.index(char) & 31) << (5 * shift)
    return value


class Header(NamedTuple):
    """The parts of a string around its bucket bodies, already checked."""

    alpha_text: str
    total: int
    zeros: int
    pos: str | None
    neg: str | None


class Accuracy(NamedTuple):
    alpha: float
    log_gamma: float
    low: int
    high: int


_ACCURACIES: dict[str, Accuracy] = {}
# Reports and gateways see a handful of accuracies; the cache only avoids re-deriving them.
_MAX_ACCURACIES: Final = 64


def accuracy_of(alpha_text: str) -> Accuracy | None:
    """Alpha, log gamma and index bounds of a canonical alpha text (``repr`` of a float in
    (0, 1)); None for any other text."""
    found = _ACCURACIES.get(alpha_text)
    if found is not None:
        return found
    try:
        alpha = float(alpha_text)
    except ValueError:
        return None
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0) or repr(alpha) != alpha_text:
        return None
    lg = log_gamma(alpha)
    found = Accuracy(alpha, lg, *index_bounds(lg))
    if len(_ACCURACIES) < _MAX_ACCURACIES:
        _ACCURACIES[alpha_text] = found
    return found


def _uint(text: str) -> int | None:
    # What the reference's `0|[1-9][0-9]*`, at most 19 characters, accepts.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    if text[0] == "0" and len(text) > 1:
        return None
    return int(text)


def _first_index(text: str, low: int, high: int) -> int | None:
    digits = text[1:] if text[:1] == "-" else text
    if not digits or _uint(digits) is None or len(text) > 19:
        return None
    first = int(text)
    return first if low <= first <= high else None


def read_header(text: object) -> Header | None:
    """The checked header of a string, or None unless it is plainly canonical."""
    if type(text) is not str or len(text) > MAX_TEXT:
        return None
    parts = text.split(":")
    n_parts = len(parts)
    if n_parts < 3 or n_parts > 6 or parts[0] != "v1":
        return None
    a, n = parts[1], parts[2]
    if a[:2] != "a=" or n[:2] != "n=":
        return None
    count = _uint(n[2:])
    if count is None:
        return None
    zeros = 0
    pos = neg = None
    i = 3
    if i < n_parts and parts[i][:2] == "z=":
        z = _uint(parts[i][2:])
        if not z:  # z=0 is spelled by omission
            return None
        zeros = z
        i += 1
    if i < n_parts and parts[i][:2] == "p=":
        pos = parts[i][2:]
        i += 1
    if i < n_parts and parts[i][:2] == "m=":
        neg = parts[i][2:]
        i += 1
    if i != n_parts:
        return None
    return Header(a[2:], count, zeros, pos, neg)


def _tokens(store: str, low: int, high: int) -> tuple[int, list[str]] | None:
    first_text, comma, body = store.partition(",")
    if not comma or not body:
        return None
    first = _first_index(first_text, low, high)
    if first is None:
        return None
    tokens = _TOKEN.findall(body)
    # Matches never overlap, so lengths adding up to the body's means they tile it exactly.
    if sum(map(len, tokens)) != len(body):
        return None
    return first, tokens


def _read_store(store: str, low: int, high: int) -> tuple[list[int], list[int]] | None:
    """Bucket indexes and counts of one store ``<first>,<body>``, or None."""
    found = _tokens(store, low, high)
    if found is None:
        return None
    position, tokens = found
    idx: list[int] = []
    cnt: list[int] = []
    add_index = idx.append
    add_count = cnt.append
    count_of = _COUNT.get
    span_of = _SPAN.__getitem__
    after_gap = True  # a body starts with a bucket, so a leading gap is refused like two in a row
    for token in tokens:
        c = count_of(token)
        if c:
            add_index(position)
            add_count(c)
            position += 1
            after_gap = False
            continue
        if c is None:  # three digits or more: rare, decoded digit by digit
            value = _long_token(token)
            if value is None:
                return None
            if not value & 1:
                add_index(position)
                add_count((value >> 1) + 1)
                position += 1
                after_gap = False
                continue
            step = (value >> 1) + 1
        else:
            step = span_of(token)
        if after_gap:
            return None
        position += step
        after_gap = True
    if after_gap or position - 1 > high:
        return None
    return idx, cnt


def _store_total(store: str, low: int, high: int) -> int | None:
    """Σ bucket counts of one store, without building its buckets; None unless canonical."""
    found = _tokens(store, low, high)
    if found is None:
        return None
    first, tokens = found
    try:
        kinds = "".join(map(_KIND.__getitem__, tokens))
        total = sum(map(_COUNT.__getitem__, tokens))
        span = sum(map(_SPAN.__getitem__, tokens))
    except KeyError:  # a token of three digits or more: count and place bucket by bucket
        buckets = _read_store(store, low, high)
        return None if buckets is None else sum(buckets[1])
    if kinds[0] == "g" or kinds[-1] == "g" or "gg" in kinds or first + span - 1 > high:
        return None
    return total


class Parts(NamedTuple):
    """A decoded histogram as plain values: what `Sketch` is built from."""

    alpha: float
    log_gamma: float
    total: int
    zeros: int
    pos_idx: Int64Array
    pos_cnt: Int64Array
    neg_idx: Int64Array
    neg_cnt: Int64Array


def _frozen(values: list[int]) -> Int64Array:
    a = np.array(values, dtype=np.int64)
    a.flags.writeable = False
    return a


def _checked_header(text: object, expected_alpha: float | None) -> tuple[Header, Accuracy] | None:
    """The header of a plainly canonical string and its accuracy, if that is `expected_alpha`."""
    header = read_header(text)
    if header is None:
        return None
    acc = accuracy_of(header.alpha_text)
    if acc is None or (expected_alpha is not None and acc.alpha != expected_alpha):
        return None
    return header, acc


def read_one(text: object, expected_alpha: float | None) -> Parts | None:
    """The histogram of one plainly canonical string, or None (ask the reference decoder)."""
    read = _checked_header(text, expected_alpha)
    if read is None:
        return None
    header, acc = read
    pos: tuple[list[int], list[int]] | None = ([], [])
    neg: tuple[list[int], list[int]] | None = ([], [])
    if header.pos is not None:
        pos = _read_store(header.pos, acc.low, acc.high)
    if header.neg is not None:
        neg = _read_store(header.neg, acc.low, acc.high)
    if pos is None or neg is None:
        return None
    if header.zeros + sum(pos[1]) + sum(neg[1]) != header.total:
        return None
    return Parts(
        acc.alpha,
        acc.log_gamma,
        header.total,
        header.zeros,
        _frozen(pos[0]),
        _frozen(pos[1]),
        _frozen(neg[0]),
        _frozen(neg[1]),
    )


def read_total(text: object, expected_alpha: float | None) -> int | None:
    """The total count of one plainly canonical string, or None (ask the reference decoder)."""
    read = _checked_header(text, expected_alpha)
    if read is None:
        return None
    header, acc = read
    total = header.zeros
    for store in (header.pos, header.neg):
        if store is not None:
            part = _store_total(store, acc.low, acc.high)
            if part is None:
                return None
            total += part
    return header.total if total == header.total else None


class Batch(NamedTuple):
    """Many decoded histograms of one accuracy, their buckets laid end to end.

    Histogram ``k`` holds ``pos_idx[pos_bounds[k]:pos_bounds[k + 1]]`` (and likewise ``neg``).
    """

    alpha: float
    log_gamma: float
    counts: list[int]
    zeros: list[int]
    pos_idx: Int64Array
    pos_cnt: Int64Array
    pos_bounds: list[int]
    neg_idx: Int64Array
    neg_cnt: Int64Array
    neg_bounds: list[int]


_EMPTY_I64: Final = np.zeros(0, dtype=np.int64)


def _batch_stores(
    firsts: tuple[str, ...], bodies: tuple[str, ...], low: int, high: int
) -> tuple[Int64Array, Int64Array, list[int], Int64Array] | None:
    """Buckets of many stores in one numpy pass, from each store's first index and body as
    `_HEADERS` read them ("" for both when absent): indexes, counts, per-store bounds into
    them, and per-store totals; None unless every store is plainly canonical."""
    n = len(bodies)
    present: list[int] | None = None  # None: every store is present
    kept, kept_firsts = bodies, firsts
    if not all(bodies):
        present = [i for i, body in enumerate(bodies) if body]
        if not present:
            return _EMPTY_I64, _EMPTY_I64, [0] * (n + 1), np.zeros(n, dtype=np.int64)
        kept = tuple(bodies[i] for i in present)
        kept_firsts = tuple(firsts[i] for i in present)
    starts = np.fromiter(map(int, kept_firsts), dtype=np.int64, count=len(kept))
    if int(starts.min()) < low or int(starts.max()) > high:
        return None
    joined = "".join(kept)
    digits = np.frombuffer(joined.encode("ascii").translate(DECODE_TABLE), dtype=np.uint8)
    if (digits == _INVALID_DIGIT).any():
        return None
    body_end = np.cumsum(np.fromiter(map(len, kept), dtype=np.int64, count=len(kept)))
    if (digits[body_end - 1] >= 32).any():  # a body ends inside a number
        return None
    tok_end = np.flatnonzero(digits < 32)
    if tok_end.size == digits.size:
        tokens = digits.astype(np.int64)
    else:
        tok_start = np.empty_like(tok_end)
        tok_start[0] = 0
        tok_start[1:] = tok_end[:-1] + 1
        lengths = tok_end - tok_start + 1
        if int(lengths.max()) > _BATCH_MAX_DIGITS:
            return None
        if ((lengths > 1) & (digits[tok_end] == 0)).any():
            return None
        shift = 5 * (np.arange(digits.size, dtype=np.int64) - np.repeat(tok_start, lengths))
        tokens = np.add.reduceat((digits & 31).astype(np.int64) << shift, tok_start)
    # Token range of each body: every body ends with a token's last digit.
    first_tok = np.empty(len(kept), dtype=np.int64)
    last_tok = np.searchsorted(tok_end, body_end - 1)
    first_tok[0] = 0
    first_tok[1:] = last_tok[:-1] + 1
    gap = (tokens & 1).astype(bool)
    if gap[first_tok].any() or gap[last_tok].any() or (gap[1:] & gap[:-1]).any():
        return None
    steps = (tokens >> 1) + 1
    step = np.where(gap, steps, 1)
    if int(step.max()) > high - low:  # also keeps the running sum below far inside int64
        return None
    before = np.cumsum(step) - step  # buckets walked before each token, over the whole batch
    offset = starts - before[first_tok]
    position = before + np.repeat(offset, last_tok - first_tok + 1)
    if int(position[last_tok].max()) > high:
        return None
    bucket = ~gap
    idx = position[bucket]
    cnt = steps[bucket]
    buckets = np.add.reduceat(bucket.astype(np.int64), first_tok)
    sums = np.add.reduceat(np.where(bucket, steps, 0), first_tok)
    if present is not None:
        buckets_of_all = np.zeros(n, dtype=np.int64)
        buckets_of_all[present] = buckets
        sums_of_all = np.zeros(n, dtype=np.int64)
        sums_of_all[present] = sums
        buckets, sums = buckets_of_all, sums_of_all
    bounds = [0, *np.cumsum(buckets).tolist()]
    idx.flags.writeable = False
    cnt.flags.writeable = False
    return idx, cnt, bounds, sums


def read_batch(texts: list[object], expected_alpha: float | None) -> Batch | None:
    """The histograms of many plainly canonical strings of one accuracy, or None when any
    string is not (ask the reference decoder, string by string, for the verdicts)."""
    if not texts or set(map(type, texts)) != {str}:
        return None
    strings: list[str] = texts  # type: ignore[assignment]  # every item is a str, checked above
    joined = "\n".join(strings)
    # One header per line: a string holding a newline could pass for two of them.
    if joined.count("\n") != len(strings) - 1 or max(map(len, strings)) > MAX_TEXT:
        return None
    rows = _HEADERS.findall(joined)
    if len(rows) != len(strings):
        return None
    alpha_texts, totals, zeros, pos_first, pos_body, neg_first, neg_body = (
        tuple(map(itemgetter(i), rows)) for i in range(7)
    )
    alpha_text = alpha_texts[0]
    if alpha_texts.count(alpha_text) != len(alpha_texts):
        return None
    acc = accuracy_of(alpha_text)
    if acc is None or (expected_alpha is not None and acc.alpha != expected_alpha):
        return None
    pos = _batch_stores(pos_first, pos_body, acc.low, acc.high)
    neg = _batch_stores(neg_first, neg_body, acc.low, acc.high)
    if pos is None or neg is None:
        return None
    counts = np.fromiter(map(int, totals), dtype=np.int64, count=len(totals))
    zero_counts = np.fromiter((int(z) if z else 0 for z in zeros), dtype=np.int64, count=len(zeros))
    # Inside int64: zeros below 1e18, and a store at most 2**22 buckets of at most 2**39 each.
    if not np.array_equal(zero_counts + pos[3] + neg[3], counts):
        return None
    return Batch(
        acc.alpha,
        acc.log_gamma,
        counts.tolist(),
        zero_counts.tolist(),
        pos[0],
        pos[1],
        pos[2],
        neg[0],
        neg[1],
        neg[2],
    )
