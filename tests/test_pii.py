"""One personal-data detector: the gateway, the audit and the scan find the same values, and the
RE2 expressions of the audit's DROP statements match at least what the detector finds.

The RE2 side runs on RE2 itself (google-re2), the engine InfluxDB's Go regexp follows.
"""

from __future__ import annotations

import re
import sys

import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.pii import GAP_CHARS, KINDS, RE2, personal_data_kind, personal_data_kinds
from federation.devstack.pii_scan import value_finding
from federation.policy.audit import personal_patterns

DISGUISED = [
    "jane%40example.com",
    "jane\\@example.com",
    '"jane"@example.com',
    "10.1.2. 3",
    "root@localhost",
]


def _influxql_regex(text: str) -> str:
    """What InfluxDB's parser hands RE2 from `/text/`: `\\/` is a `/`, every other escape stays."""
    return text.replace("\\/", "/")


def _re2_finds(kind: str, value: str) -> bool:
    return re2.search(_influxql_regex(RE2[kind]), value) is not None


def test_the_disguised_values_are_found_by_the_gateway_the_audit_and_the_scan() -> None:
    for value in DISGUISED:
        kinds = personal_data_kinds(value)
        assert personal_data_kind(value) is not None, value
        assert personal_patterns(value), value
        assert value_finding("x", value, frozenset()) is not None, value
        assert kinds and all(_re2_finds(kind, value) for kind in kinds), value


def test_names_and_other_identifiers_are_not_personal_data() -> None:
    for value in ("Foo::Bar", "mx1", "c1042", "v1.2.3", "10:00:00", "smtp-out-3", "1.2.3.4.5"):
        assert personal_data_kinds(value) == [], value
        assert personal_data_kind(value) is None, value


def test_the_gap_class_is_what_the_detector_takes_out() -> None:
    """RE2's `GAP_CHARS` holds exactly the characters the detector removes (Python's `\\s`,
    backslash and quotes), over every code point."""
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    python = re.findall(r"[\s\\\"']", every)
    assert re2.findall(f"[{GAP_CHARS}]", every) == python
    assert len(python) > 30


@st.composite
def hidden(draw: st.DrawFn) -> str:
    """A personal value, disguised: split by gap characters, quoted, percent-encoded, embedded."""
    value = draw(
        st.one_of(
            st.emails(),
            st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}", fullmatch=True),
            st.ip_addresses(v=4).map(str),
            st.ip_addresses(v=6).map(str),
        )
    )
    if draw(st.booleans()):
        value = value.replace("@", "%40")
    gaps = st.text(st.sampled_from(" \t\\\"'\u00a0\u2003\x1c\x85"), min_size=1, max_size=3)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(gaps) + value[at:]
    before, after = draw(st.text(max_size=6)), draw(st.text(max_size=6))
    return before + value + after


@settings(max_examples=400, deadline=None)
@given(st.one_of(hidden(), st.text(max_size=40)))
def test_re2_expressions_match_at_least_what_the_detector_finds(value: str) -> None:
    kinds = personal_data_kinds(value)
    assert set(kinds) <= set(KINDS)
    for kind in kinds:
        assert _re2_finds(kind, value), (kind, value)
    # The audit and the scan read the same detector as the gateway.
    assert bool(kinds) == (personal_data_kind(value) is not None)
    assert len(personal_patterns(value)) == len(kinds)
