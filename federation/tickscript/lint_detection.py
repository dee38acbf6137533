"""The linter's rule for detection scripts: key values never go to the gateway cluster.

A detection's script reads personal data by design (its key and the counted key) and passes
their names to the UDF; what it may not do is send anything but counts to central. So every
`influxDBOut` that writes to the gateway cluster must take its points from the project's UDF
by one of exactly two paths, with no other node in between:

- straight from the UDF in `counts` mode, which emits nothing but counts;
- from the UDF in `split` mode (findings and counts, each point tagged with its destination)
  through `|where(lambda: "<route tag>" == '<central>')` and then `|delete().tag('<route tag>')`,
  so only the points the UDF meant for central pass, without the routing tag;

and the output adds no tag but `dc`. An output whose cluster is not a constant cannot be proven
local and is refused too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from federation.core.detection_plan import ROUTE_CENTRAL, ROUTE_TAG
from federation.tickscript.ast import Binary, Lambda, Reference, StringLiteral
from federation.tickscript.lexer import TokenType


class _Link(Protocol):
    line: int
    column: int
    args: Any


class _Node(Protocol):
    kind: str
    name: str
    line: int
    column: int
    args: Any
    parent: Any

    def last(self, name: str) -> Any: ...
    def all(self, name: str) -> Any: ...


Constant = Callable[[Any], str | None]
"""The constant string an argument evaluates to, or None when it is not one."""


def _udf_mode(node: _Node | None, udf_name: str, constant: Constant) -> str | None:
    """The constant `mode` of a call of the project's UDF, else None."""
    if node is None or node.kind != "@udf" or node.name != udf_name:
        return None
    link = node.last("mode")
    return constant(link.args[0]) if link is not None and link.args else None


def _keeps_only_central(node: _Node | None) -> bool:
    """Whether `node` is `|where(lambda: "<route tag>" == '<central>')`, exactly."""
    if node is None or node.kind != "where" or len(node.args or ()) != 1:
        return False
    body = node.args[0].body if isinstance(node.args[0], Lambda) else None
    return (
        isinstance(body, Binary)
        and body.operator == TokenType.EQUAL
        and isinstance(body.left, Reference)
        and body.left.name == ROUTE_TAG
        and isinstance(body.right, StringLiteral)
        and body.right.value == ROUTE_CENTRAL
    )


def _deletes_route(node: _Node, constant: Constant) -> bool:
    return node.kind == "delete" and any(
        link.args and constant(link.args[0]) == ROUTE_TAG for link in node.all("tag")
    )


def _counts_only(parent: _Node | None, udf_name: str, constant: Constant) -> bool:
    """Whether the points reaching an output from `parent` can only be the UDF's counts."""
    if _udf_mode(parent, udf_name, constant) == "counts":
        return True
    if parent is None or not _deletes_route(parent, constant):
        return False
    where = parent.parent
    return _keeps_only_central(where) and _udf_mode(where.parent, udf_name, constant) == "split"


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
    if not _counts_only(node.parent, udf_name, constant):
        what = (
            f"@{udf_name}().mode('counts'), or @{udf_name}().mode('split') through "
            f"|where(lambda: \"{ROUTE_TAG}\" == '{ROUTE_CENTRAL}') |delete().tag('{ROUTE_TAG}'),"
        )
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
