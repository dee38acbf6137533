"""The reference reader of the canonical ``v1:`` histogram text (format: `federation.core.sketch`).

Vectorised with numpy, it accepts exactly what `Sketch.encode` writes and explains every
refusal; the fast readers (`federation.core._sketch_fast`) handle only what is plainly canonical and
leave the verdict and its message to this one.
"""

from __future__ import annotations

import math
import re
from typing import Final

import numpy as np
import numpy.typing as npt

from federation.core._sketch_fast import DECODE_TABLE, MAX_DIGITS, MAX_TEXT, index_bounds, log_gamma
from federation.errors import SketchDecodeError

Int64Array = npt.NDArray[np.int64]
Parts = tuple[float, float, int, int, Int64Array, Int64Array, Int64Array, Int64Array]
"""alpha, log gamma, count, zero count, positive indexes and counts, negative ones."""

ENCODING_VERSION: Final = "v1"
EMPTY: Final[Int64Array] = np.zeros(0, dtype=np.int64)
EMPTY.flags.writeable = False

_INVALID_DIGIT: Final = 255
_PREFIX_SHOWN: Final = 24
_UINT = re.compile(r"0|[1-9][0-9]*")
_SINT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_VERSION = re.compile(r"v[0-9]+")


def frozen(a: Int64Array) -> Int64Array:
    """`a`, made read-only (histograms share their arrays)."""
    a.flags.writeable = False
    return a


class _Reject(Exception):
    pass


def reference_parts(text: str, expected_alpha: float | None) -> Parts:
    """What `Sketch._make` takes for the histogram `text` encodes; SketchDecodeError (naming
    the problem and at most a short prefix of the text) for anything `encode` would not
    write."""
    try:
        return _decode_checked(text, expected_alpha)
    except _Reject as e:
        shown = text[:_PREFIX_SHOWN] if isinstance(text, str) else ""
        more = "…" if isinstance(text, str) and len(text) > _PREFIX_SHOWN else ""
        raise SketchDecodeError(f"sketch {shown + more!r}: {e}") from None


def _decode_checked(text: str, expected_alpha: float | None) -> Parts:
    if not isinstance(text, str):
        raise _Reject(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise _Reject(f"longer than {MAX_TEXT} characters")
    parts = text.split(":")
    version = parts[0]
    if version != ENCODING_VERSION:
        if _VERSION.fullmatch(version):
            raise _Reject(f"unknown encoding version {version!r} (this code reads v1)")
        raise _Reject("not a sketch encoding (no version prefix)")
    fields: dict[str, str] = {}
    order = ["a", "n", "z", "p", "m"]
    position = 0
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            raise _Reject(f"part {part[:8]!r} is not key=value")
        if key not in order[position:]:
            what = "repeated or out of order" if key in order else "unknown"
            raise _Reject(f"{what} key {key[:8]!r}")
        position = order.index(key) + 1
        fields[key] = value
    if "a" not in fields or "n" not in fields:
        raise _Reject("missing a= or n=")
    try:
        alpha = float(fields["a"])
    except ValueError:
        raise _Reject("alpha is not a number") from None
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0) or repr(alpha) != fields["a"]:
        raise _Reject("alpha must be a canonical float in (0, 1)")
    if expected_alpha is not None and alpha != expected_alpha:
        raise _Reject(f"alpha {alpha!r} differs from the expected {expected_alpha!r}")
    count = _parse_uint(fields["n"], "n")
    zeros = _parse_uint(fields.get("z", "0"), "z")
    if "z" in fields and zeros == 0:
        raise _Reject("z=0 must be omitted")
    lg = log_gamma(alpha)
    bounds = index_bounds(lg)
    pos_idx, pos_cnt = _decode_store(fields.get("p"), "p", bounds)
    neg_idx, neg_cnt = _decode_store(fields.get("m"), "m", bounds)
    total = zeros + _exact_sum(pos_cnt) + _exact_sum(neg_cnt)
    if total != count:
        raise _Reject(f"bucket counts sum to {total}, not n={count}")
    return alpha, lg, count, zeros, pos_idx, pos_cnt, neg_idx, neg_cnt


def _parse_uint(value: str, key: str) -> int:
    if not _UINT.fullmatch(value) or len(value) > 19:
        raise _Reject(f"{key}= is not a non-negative integer")
    return int(value)


def _exact_sum(counts: Int64Array) -> int:
    if counts.size == 0:
        return 0
    if int(counts.max()) < (1 << 62) // counts.size:
        return int(counts.sum())
    return sum(counts.tolist())


def _decode_store(
    value: str | None, key: str, bounds: tuple[int, int]
) -> tuple[Int64Array, Int64Array]:
    if value is None:
        return EMPTY, EMPTY
    first_text, comma, body = value.partition(",")
    if not comma or not _SINT.fullmatch(first_text) or len(first_text) > 19:
        raise _Reject(f"{key}= must be <first index>,<buckets>")
    first = int(first_text)
    try:
        raw = body.encode("ascii")
    except UnicodeEncodeError:
        raise _Reject(f"{key}= has a character outside the encoding alphabet") from None
    digits = np.frombuffer(raw.translate(DECODE_TABLE), dtype=np.uint8)
    if digits.size == 0:
        raise _Reject(f"{key}= has no buckets")
    if (digits == _INVALID_DIGIT).any():
        raise _Reject(f"{key}= has a character outside the encoding alphabet")
    last_digit = digits < 32
    ends = np.flatnonzero(last_digit)
    if ends.size == 0 or ends[-1] != digits.size - 1:
        raise _Reject(f"{key}= ends inside a number")
    if ends.size == digits.size:
        tokens = digits.astype(np.int64)
    else:
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        lengths = ends - starts + 1
        if int(lengths.max()) > MAX_DIGITS:
            raise _Reject(f"{key}= has a number too large")
        if ((lengths > 1) & (digits[ends] == 0)).any():
            raise _Reject(f"{key}= has a number with a superfluous digit")
        shift = 5 * (np.arange(digits.size, dtype=np.int64) - np.repeat(starts, lengths))
        tokens = np.add.reduceat((digits & 31).astype(np.int64) << shift, starts)
    gap = (tokens & 1).astype(bool)
    if gap[0] or gap[-1]:
        raise _Reject(f"{key}= must start and end with a bucket")
    if (gap[1:] & gap[:-1]).any():
        raise _Reject(f"{key}= has two gaps in a row")
    low, high = bounds
    if not (low <= first <= high):
        raise _Reject(f"{key}= first index {first} is out of range for alpha")
    steps = (tokens >> 1) + 1
    step = np.where(gap, steps, 1)
    if int(step.max()) > high - low:
        raise _Reject(f"{key}= has a gap past the range of float64")
    position = first + np.cumsum(step) - step
    idx = position[~gap]
    if int(idx[-1]) > high:
        raise _Reject(f"{key}= bucket index is out of range for alpha")
    cnt = steps[~gap]
    return frozen(np.ascontiguousarray(idx)), frozen(np.ascontiguousarray(cnt))
