"""Does a value look like personal data? E-mail addresses and IP addresses, by shape.

One detector for every place that asks: the gateway on every tag value and string field of
every point it receives, ingest on every tag value it would write, both executors (through
`federation.core.aggregate`) on every dimension value of a group, the audit on the raw series
and on central's sampled values (whose DROP statements use `RE2`, the same shapes in the
syntax InfluxDB runs), and the scan of central.
Pure: no I/O, so the agent, the UDF and ingest import it without the coordinator. The
patterns look for the shapes inside a value (`user@example.com`, `10.1.2.3`, `2001:db8::1`,
also embedded, e.g. `rcpt=user@example.com`), while ordinary identifiers such as mailer names
(`mx1`, `smtp-out-3`), customer ids (`c1042`), versions (`v1.2.3`) and clock times (`10:00:00`)
pass. Which kind was found is returned, never the value.
"""

from __future__ import annotations

import ipaddress
import re

_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@"  # local part
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"  # a host name (also `root@localhost`)
    r"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@\[[0-9A-Fa-f:.]+\]"  # address literal
    r"|[A-Za-z0-9._%+-]+%40[A-Za-z0-9.-]+\.[A-Za-z]{2,63}",  # URL-encoded @
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9]|\.[0-9])")
# A run of hex digits, colons and dots glued to no other letter or digit (`Foo::Bar` is a name).
_IPV6_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?![0-9A-Za-z])"
)
_NOISE = re.compile(r"[\s\\\"']+")


EMAIL = "e-mail address"
IPV4 = "IPv4 address"
IPV6 = "IPv6 address"
KINDS = (EMAIL, IPV4, IPV6)

# The same shapes in Go's RE2 syntax (InfluxQL's regular expressions, `/` escaped), for the
# statements that select what this detector finds (the audit's DROP SERIES). Each matches at
# least every value `personal_data_kinds` finds of its kind, also when blanks, quotes and
# backslashes split it anywhere (`_GAP`: what `_NOISE` removes, Python's `\s` spelled out);
# tests/test_pii.py holds them to that with RE2 itself.
GAP_CHARS = r"""\t-\r\x{1c}-\x{1f}\x{85}\pZ\\"'"""
_GAP = f"[{GAP_CHARS}]*"
_DIGIT = r"[0-9]"
_OCTET_RE2 = rf"{_DIGIT}(?:{_GAP}{_DIGIT}){{0,2}}"
RE2: dict[str, str] = {
    EMAIL: (
        rf"[A-Za-z0-9!#$%&'*+\/=?^_`{{|}}~.-]{_GAP}@{_GAP}[A-Za-z0-9\[]"
        rf"|[A-Za-z0-9._%+-]{_GAP}%{_GAP}4{_GAP}0"
    ),
    IPV4: rf"{_DIGIT}{_GAP}\.{_GAP}{_OCTET_RE2}{_GAP}\.{_GAP}{_OCTET_RE2}{_GAP}\.{_GAP}{_DIGIT}",
    IPV6: f":[0-9A-Fa-f{GAP_CHARS}]*:",
}


def personal_data_kind(value: str) -> str | None:
    """`"e-mail address"`, `"IPv4 address"`, `"IPv6 address"`, or None if none is found.

    The value is also read with blanks, quotes and backslashes taken out, so that an address
    split or wrapped by them (`jane\\@example.com`, `"jane"@example.com`, `10.1.2. 3`) is found.
    """
    kind = _kind(value)
    if kind is None:
        compact = _NOISE.sub("", value)
        if compact != value:
            kind = _kind(compact)
    return kind


def personal_data_kinds(value: str) -> list[str]:
    """Every kind of personal data `value` holds, in the order of `KINDS` (the audit counts
    each); read as `personal_data_kind` reads it."""
    compact = _NOISE.sub("", value)
    texts = (value,) if compact == value else (value, compact)
    return [kind for kind, holds in _HOLDS.items() if any(holds(text) for text in texts)]


def _kind(value: str) -> str | None:
    return next((kind for kind, holds in _HOLDS.items() if holds(value)), None)


def _holds_email(value: str) -> bool:
    return ("@" in value or "%40" in value) and _EMAIL.search(value) is not None


def _holds_ipv4(value: str) -> bool:
    return "." in value and _IPV4.search(value) is not None


def _holds_ipv6(value: str) -> bool:
    if value.count(":") < 2:
        return False
    for match in _IPV6_CANDIDATE.finditer(value):
        try:
            ipaddress.IPv6Address(match.group(0).strip("."))
        except ValueError:
            continue
        return True
    return False


_HOLDS = {EMAIL: _holds_email, IPV4: _holds_ipv4, IPV6: _holds_ipv6}
