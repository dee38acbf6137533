"""Does a value look like personal data? E-mail addresses and IP addresses, by shape.

One detector for every place that asks: the gateway on every tag value and string field of
every point it receives, ingest on every tag value it would write, both executors (through
`federation.core.aggregate`) on every dimension value of a group, and the audit on the raw series.
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
_IPV6_CANDIDATE = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_NOISE = re.compile(r"[\s\\\"']+")


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


def _kind(value: str) -> str | None:
    if ("@" in value or "%40" in value) and _EMAIL.search(value):
        return "e-mail address"
    if "." in value and _IPV4.search(value):
        return "IPv4 address"
    if value.count(":") >= 2:
        for match in _IPV6_CANDIDATE.finditer(value):
            candidate = match.group(0).strip(".")
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            return "IPv6 address"
    return None
