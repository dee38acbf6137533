"""The linter's rule for detection scripts: key values never go to the gateway cluster.

A detection's script reads personal data by design (its key and the counted key) and passes
their names to the UDF; what it may not do is send anything but counts to central. So every
`influxDBOut` that writes to the gateway cluster must take its points straight from the
project's UDF in `counts` mode — no other node in between, no other mode — and add no tag but
`dc`; an output whose cluster is not a constant cannot be proven local and is refused too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class _Link(Protocol):
    line: int
    column: int
    args: Any


class _Node(Protocol):
    kind: str
    name: str
    line: int
    column: int
    parent: Any

    def last(self, name: str) -> Any: ...
    def all(self, name: str) -> Any: ...


Constant = Callable[[Any], str | None]
"""The constant string an argument evaluates to, or None when it is not one."""


def gateway_output_problems(
    node: _Node, gateway_cluster: str, udf_name: str, constant: Constant
) -> list[tuple[int, int, str]]:
    """The problems of one `influxDBOut` node of a detection script: line, column, why."""
    cluster_link = node.last("cluster")
    cluster = "" if cluster_link is None else constant((cluster_link.args or (None,))[0])
    if cluster is None:
        at = cluster_link
        return [(at.line, at.column, "a detection's output cluster must be a constant string")]
    if cluster != gateway_cluster:
        return []  # the DC's own InfluxDB: where findings belong
    problems: list[tuple[int, int, str]] = []
    parent = node.parent
    mode_link = parent.last("mode") if parent is not None and parent.kind == "@udf" else None
    mode = constant(mode_link.args[0]) if mode_link is not None and mode_link.args else None
    if parent is None or parent.kind != "@udf" or parent.name != udf_name or mode != "counts":
        what = f"@{udf_name}().mode('counts')"
        problems.append(
            (node.line, node.column, f"only {what} may write to the gateway cluster {gateway_cluster!r}: "
                   "anything else could send a key value out of the DC")
        )  # fmt: skip
    for link in node.all("tag"):
        key = constant(link.args[0]) if link.args else None
        if key != "dc":
            message = "a detection's output to the gateway carries no tag but 'dc'"
            problems.append((link.line, link.column, message))
    return problems
