"""Lint TICKscripts against Kapacitor's rules and the project's own (batch windows, no PII).

`lint()` parses the script, rebuilds its pipeline (nodes, their properties and parents, through
`var` bindings) and reports every problem with a stable rule id. It never raises: a script that
does not parse yields one `syntax` problem. Rules that need to know the aggregation (window,
personal-data keys, value field) run only when a `LintContext` is given.

InfluxQL inside `|query('''...''')` is read with a small tokenizer, not a full parser: enough
to find the SELECT columns with their `::tag`/`::field` casts, the FROM targets, the keys the
WHERE clause refers to, and any GROUP BY.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from federation.errors import TickScriptError
from federation.tickscript.ast import (
    Chain,
    ChainLink,
    Dbrp,
    Declaration,
    Expression,
    ExpressionStatement,
    Identifier,
    StringLiteral,
    TypeDeclaration,
)
from federation.tickscript.evaluate import UNKNOWN, Binding, PipelineNode, Value, evaluate
from federation.tickscript.influxql import (
    Query,
    QueryError,
    parse_query,
)
from federation.tickscript.lint_detection import gateway_output_problems
from federation.tickscript.parser import parse
from federation.tickscript.signatures import (
    ANY,
    CHAINING,
    FIELD_PRESERVING,
    FLOAT,
    NAME_PRESERVING,
    NUMBER,
    PROPERTIES,
    SELECTORS,
    SOURCE_CHILDREN,
    STRING,
    UDF,
    Signature,
)

RULES: dict[str, str] = {
    "syntax": "the script does not parse (Kapacitor's lexer and parser rules)",
    "unknown-node": "a chaining method or UDF that the project's pipelines do not use",
    "unknown-property": "a property method the node does not have",
    "operator": "'|' used for a property, '.' for a chaining method, or '@' for a non-UDF",
    "argument": "wrong number or type of arguments (e.g. \"x\" where 'x' is meant)",
    "task-type": "every chain must start at batch; stream, mixing or no source is refused",
    "does-nothing": "a pipeline with only its source (or whose query results go nowhere)",
    "query-syntax": "the query text is not one InfluxQL SELECT ... FROM ... statement",
    "query-time-condition": "the query has a time condition (Kapacitor adds the window's own)",
    "query-group-by": "the query groups (GROUP BY or .groupBy): a run must be one batch",
    "query-from-unqualified": 'FROM is not fully qualified as "db"."rp"."measurement"',
    "query-dbrp": "a FROM database/retention policy not declared in a dbrp statement",
    "period-window": ".period missing or not equal to the window",
    "every-window": ".every missing (or .cron used) or not equal to the window",
    "offset-multiple": ".offset not a whole number of windows",
    "align": ".align() missing on a query",
    "percentile-float": "percentile()'s second argument is not a float literal (95.0)",
    "influxdbout-database": "influxDBOut without .database()",
    "influxdbout-rp": "influxDBOut without .retentionPolicy()",
    "influxdbout-measurement": "influxDBOut without .measurement() after a node that names none",
    "pii-key": "a personal-data key selected, filtered, grouped, tagged or output",
    "pii-selector": "a selector over raw points that carry fields besides the value field",
    "detection-gateway": "a detection writes to the gateway cluster other than the UDF's counts",
}


@dataclass(frozen=True)
class LintContext:
    """What the linter needs to know about the aggregation a script implements."""

    window_ns: int
    personal_keys: frozenset[str]
    value_field: str
    udf_name: str = "fedagg"
    detection_gateway: str | None = None
    """Set for a detection's script: the gateway cluster only its counts may go to. Its
    personal keys are then read and named by design, and this rule guards what leaves."""


@dataclass(frozen=True, order=True)
class LintProblem:
    """One problem at `file:line:column` (1-based), with a stable `rule` id from `RULES`."""

    file: str
    line: int
    column: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.rule}: {self.message}"


# -- the linter ----------------------------------------------------------------------------


class _Linter:
    def __init__(
        self, file: str, ctx: LintContext | None, personal_keys: frozenset[str] = frozenset()
    ) -> None:
        self.file = file
        self.ctx = ctx
        self.personal_keys = ctx.personal_keys if ctx is not None else personal_keys
        self.udf_name = ctx.udf_name if ctx is not None else "fedagg"
        self.problems: list[LintProblem] = []
        self.env: dict[str, Binding] = {}
        self.dbrps: set[tuple[str, str]] = set()
        self.sources: list[PipelineNode] = []
        self.nodes: list[PipelineNode] = []

    def report(self, line: int, column: int, rule: str, message: str) -> None:
        self.problems.append(LintProblem(self.file, line, column, rule, message))

    def at(self, node: PipelineNode | ChainLink | Expression, rule: str, message: str) -> None:
        self.report(node.line, node.column, rule, message)

    # -- building the pipeline ----------------------------------------------------------

    def run(self, source: str) -> list[LintProblem]:
        try:
            program = parse(source, self.file)
        except TickScriptError as exc:
            return [LintProblem(self.file, exc.line, exc.column, "syntax", exc.message)]
        for statement in program.statements:
            if isinstance(statement, Dbrp):
                self.dbrps.add((statement.database, statement.retention_policy))
            elif isinstance(statement, Declaration):
                if isinstance(statement.value, Chain | Identifier) and _is_pipeline(
                    statement.value
                ):
                    node = self.build(statement.value)
                    self.env[statement.name] = node if node is not None else UNKNOWN
                else:
                    self.env[statement.name] = evaluate(statement.value, self.env)
            elif isinstance(statement, TypeDeclaration):
                self.env[statement.name] = Value(statement.type_name)
            elif isinstance(statement, ExpressionStatement):
                expression = statement.expression
                if isinstance(expression, Chain | Identifier) and _is_pipeline(expression):
                    self.build(expression)
        self.check_task_type()
        for node in self.nodes:
            self.check_node(node)
        return sorted(self.problems, key=lambda p: (p.line, p.column, p.rule, p.message))

    def build(self, chain: Chain | Identifier) -> PipelineNode | None:
        if isinstance(chain, Identifier):
            chain = Chain(chain, (), chain.line, chain.column)
        head = chain.head
        current: PipelineNode | None
        if isinstance(head, Identifier) and head.name in SOURCE_CHILDREN:
            current = PipelineNode(head.name, head.name, head.line, head.column)
            self.sources.append(current)
            self.nodes.append(current)
        elif isinstance(head, Identifier) and isinstance(self.env.get(head.name), PipelineNode):
            bound = self.env[head.name]
            assert isinstance(bound, PipelineNode)
            current = bound
        else:
            name = head.name
            self.at(head, "task-type", f"a chain starts at {name!r}: chains start at batch")
            return None
        for link in chain.links:
            if current is None:
                break
            current = self.link(current, link)
        return current

    def link(self, current: PipelineNode, link: ChainLink) -> PipelineNode | None:
        name, udf = link.name, self.udf_name
        if not current.known:
            # Below an unknown node nothing can be checked, and nothing more is reported.
            return current if link.operator == "." else self.child(current, name, link, False)
        if link.operator == ".":
            properties = PROPERTIES[current.kind]
            if name in properties:
                current.properties.append(link)
                self.check_args(link, properties[name], f".{name}")
            elif name in CHAINING or name == udf:
                symbol = "@" if name == udf else "|"
                self.at(
                    link,
                    "operator",
                    f"{name} is a chaining method, not a property of {current.name}: "
                    f"write '{symbol}{name}(...)'",
                )
                # When the call fits the chaining method, go on as if the right operator was
                # used, so one slip is one problem; otherwise stay on this node.
                if name == udf or _fits(link, CHAINING[name]):
                    return self.link(current, replace(link, operator=symbol))
            else:
                known = ", ".join(sorted(properties)) or "none"
                self.at(
                    link,
                    "unknown-property",
                    f"{current.name} has no property .{name} (it has: {known})",
                )
            return current
        if link.operator == "@":
            if name == udf:
                return self.child(current, UDF, link)
            if name in CHAINING:
                self.at(link, "operator", f"{name} is not a UDF: write '|{name}(...)'")
                return self.link(current, replace(link, operator="|"))
            else:
                self.at(link, "unknown-node", f"unknown UDF @{name} (the project's UDF is @{udf})")
            return self.child(current, name, link, known=False)
        # A '|' link.
        if name == udf:
            self.at(link, "operator", f"{name} is a UDF: write '@{name}()'")
            return self.child(current, UDF, link)
        if current.known and name in PROPERTIES[current.kind] and name not in CHAINING:
            self.at(
                link,
                "operator",
                f"{name} is a property of {current.name}, not a chaining method: "
                f"write '.{name}(...)'",
            )
            current.properties.append(link)
            return current
        if name not in CHAINING:
            self.at(link, "unknown-node", f"unknown chaining method |{name}")
            return self.child(current, name, link, known=False)
        expected_child = SOURCE_CHILDREN.get(current.kind)
        if current.known and expected_child is not None and name != expected_child:
            self.at(
                link,
                "unknown-node",
                f"{current.kind} has no chaining method |{name}: start with "
                f"{current.kind}|{expected_child}(...)",
            )
            return self.child(current, name, link, known=False)
        if name in SOURCE_CHILDREN.values() and current.kind not in SOURCE_CHILDREN:
            self.at(link, "unknown-node", f"|{name} can only follow a source (batch|query)")
            return self.child(current, name, link, known=False)
        if current.kind == "influxDBOut":
            self.at(link, "unknown-node", "influxDBOut ends a pipeline: it has no children")
        self.check_args(link, CHAINING[name], f"|{name}")
        return self.child(current, name, link)

    def child(
        self, parent: PipelineNode, kind: str, link: ChainLink, known: bool = True
    ) -> PipelineNode:
        node = PipelineNode(kind, link.name, link.line, link.column, link.args or (), parent, known)
        parent.children.append(node)
        self.nodes.append(node)
        return node

    def check_args(self, link: ChainLink, signature: Signature, label: str) -> None:
        args = link.args or ()
        fixed = signature.fixed
        too_few = len(args) < len(fixed) + signature.minimum
        too_many = signature.variadic is None and len(args) > len(fixed)
        if too_few or too_many:
            expected = ", ".join(fixed) if fixed else ""
            if signature.variadic is not None:
                expected += (", " if expected else "") + f"{signature.variadic}..."
            self.at(link, "argument", f"{label}() takes ({expected}), got {len(args)} arguments")
            return
        for index, arg in enumerate(args):
            kind = fixed[index] if index < len(fixed) else signature.variadic
            if kind is None or kind == ANY:
                continue
            if label == "|percentile" and index == 1:
                continue  # reported by its own rule
            value = evaluate(arg, self.env)
            if not _matches(value, kind):
                message = f"{label}() argument {index + 1} must be a {kind}, got {value.kind}"
                if value.kind == "reference" and kind == STRING:
                    message += " (did you use double quotes instead of single quotes?)"
                if value.kind == "int" and kind == FLOAT:
                    message += f" (write {value.value}.0)"
                self.at(arg, "argument", message)

    # -- whole-script checks ------------------------------------------------------------

    def check_task_type(self) -> None:
        kinds = {source.kind for source in self.sources}
        for source in self.sources:
            if source.kind == "stream":
                extra = " (and a task cannot mix batch and stream)" if "batch" in kinds else ""
                self.at(
                    source,
                    "task-type",
                    "stream task: the project's tasks are batch tasks (batch|query)" + extra,
                )
        if not self.sources:
            self.report(1, 1, "task-type", "no pipeline starts at batch: invalid task type")
        for source in self.sources:
            if not source.children:
                self.at(source, "does-nothing", f"{source.kind} alone does nothing")
                continue
            inner = list(source.children)
            if all(node.kind in SOURCE_CHILDREN.values() and not node.children for node in inner):
                for node in inner:
                    self.at(node, "does-nothing", f"nothing consumes the results of |{node.name}")

    # -- per-node checks ----------------------------------------------------------------

    def check_node(self, node: PipelineNode) -> None:
        if not node.known:
            return
        if node.kind == "query":
            self.check_query(node)
        elif node.kind == "influxDBOut":
            self.check_influxdb_out(node)
            if self.ctx is not None and self.ctx.detection_gateway is not None:
                for line, column, message in gateway_output_problems(
                    node, self.ctx.detection_gateway, self.udf_name, self.constant
                ):
                    self.report(line, column, "detection-gateway", message)
        elif node.kind == "percentile" and len(node.args) == 2:
            value = evaluate(node.args[1], self.env)
            if value.kind != "float":
                self.at(
                    node.args[1],
                    "percentile-float",
                    f"percentile's second argument must be a float literal like 95.0, "
                    f"got {value.kind}",
                )
        if self.personal_keys:
            self.check_pii(node, self.personal_keys)
        if self.ctx is not None and node.kind in SELECTORS:
            self.check_selector(node, self.ctx)

    def check_query(self, node: PipelineNode) -> None:
        self.check_schedule(node)
        if node.last("align") is None:
            self.at(node, "align", "add .align() so every run covers exactly one window")
        for link in node.all("groupBy"):
            self.at(link, "query-group-by", ".groupBy on the query: a run must be one batch")
        literal = node.args[0] if node.args else None
        if not isinstance(literal, StringLiteral):
            return
        try:
            query = parse_query(literal.value)
        except QueryError as exc:
            line, column = _position_in(literal, exc.offset)
            self.report(line, column, "query-syntax", exc.message)
            return
        for name, offset in query.where_refs:
            if name.lower() == "time":
                line, column = _position_in(literal, offset)
                self.report(
                    line,
                    column,
                    "query-time-condition",
                    "no time condition in the query: Kapacitor adds the window's own bounds",
                )
        if query.group_by_offset is not None:
            line, column = _position_in(literal, query.group_by_offset)
            self.report(
                line,
                column,
                "query-group-by",
                "no GROUP BY in the query: Kapacitor replaces it, and a run must be one batch",
            )
        for names, offset in query.sources:
            line, column = _position_in(literal, offset)
            if len(names) != 3 or not all(names):
                shown = ".".join(names) if names else "a subquery"
                self.report(
                    line,
                    column,
                    "query-from-unqualified",
                    f'FROM {shown} must be fully qualified as "db"."rp"."measurement"',
                )
            elif (names[0], names[1]) not in self.dbrps:
                self.report(
                    line,
                    column,
                    "query-dbrp",
                    f'"{names[0]}"."{names[1]}" is not declared: add dbrp "{names[0]}"."{names[1]}"',
                )
        if self.personal_keys:
            self.check_query_pii(literal, query, self.personal_keys)

    def constant(self, expression: Expression | None) -> str | None:
        """The constant string `expression` evaluates to, else None."""
        if expression is None:
            return None
        value = evaluate(expression, self.env)
        return value.value if value.kind == "string" and isinstance(value.value, str) else None

    def duration_of(self, link: ChainLink | None) -> int | None:
        if link is None or not link.args:
            return None
        value = evaluate(link.args[0], self.env)
        return value.value if value.kind == "duration" and isinstance(value.value, int) else None

    def not_constant(self, link: ChainLink) -> bool:
        """A duration property whose value is not known; a wrong type is `argument`'s job."""
        if not link.args:
            return False
        kind = evaluate(link.args[0], self.env).kind
        return kind in ("unknown", "duration")

    def check_schedule(self, node: PipelineNode) -> None:
        window = self.ctx.window_ns if self.ctx is not None else None
        period_link, every_link = node.last("period"), node.last("every")
        period, every = self.duration_of(period_link), self.duration_of(every_link)
        if period_link is None:
            self.at(node, "period-window", ".period is missing (the query would return nothing)")
        elif period is None:
            if self.not_constant(period_link):
                self.at(period_link, "period-window", ".period is not a constant duration")
        elif window is not None and period != window:
            self.at(period_link, "period-window", ".period must equal the window")
        for cron in node.all("cron"):
            self.at(cron, "every-window", "use .every(window) and .align(), not .cron")
        if every_link is None:
            self.at(node, "every-window", ".every is missing")
        elif every is None:
            if self.not_constant(every_link):
                self.at(every_link, "every-window", ".every is not a constant duration")
        elif window is not None and every != window:
            self.at(every_link, "every-window", ".every must equal the window")
        elif window is None and period is not None and every != period:
            self.at(every_link, "every-window", ".every must equal .period (one window)")
        offset_link = node.last("offset")
        if offset_link is not None:
            offset = self.duration_of(offset_link)
            unit = window if window is not None else period
            if offset is None:
                if self.not_constant(offset_link):
                    self.at(offset_link, "offset-multiple", ".offset is not a constant duration")
            elif unit and offset % unit != 0:
                self.at(offset_link, "offset-multiple", ".offset must be a multiple of the window")

    def check_influxdb_out(self, node: PipelineNode) -> None:
        for name, rule in (
            ("database", "influxdbout-database"),
            ("retentionPolicy", "influxdbout-rp"),
        ):
            link = node.last(name)
            if link is None or _is_empty_string(link, self.env):
                self.at(node, rule, f"influxDBOut needs .{name}('...')")
        parent = node.parent
        # These nodes pass points on under their own names: a UDF's stay the UDF's.
        while parent is not None and parent.kind in NAME_PRESERVING:
            parent = parent.parent
        if parent is not None and (parent.kind == UDF or not parent.known):
            return
        link = node.last("measurement")
        if link is None or _is_empty_string(link, self.env):
            self.at(node, "influxdbout-measurement", "influxDBOut needs .measurement('...')")

    # -- personal data ------------------------------------------------------------------

    def check_query_pii(self, literal: StringLiteral, query: Query, keys: frozenset[str]) -> None:
        places = [(c.name, c.offset, "selected") for c in query.columns]
        places += [(name, offset, "filtered on") for name, offset in query.where_refs]
        for name, offset, verb in places:
            if name in keys:
                line, column = _position_in(literal, offset)
                self.report(line, column, "pii-key", f"personal-data key {name!r} is {verb}")

    def check_pii(self, node: PipelineNode, keys: frozenset[str]) -> None:
        strings: list[tuple[Expression, str]] = []
        if node.kind == "groupBy":
            strings += [(arg, "grouped by") for arg in node.args]
        for link in node.properties:
            args = link.args or ()
            if link.name == "groupBy":
                strings += [(arg, "grouped by") for arg in args]
            elif link.name == "tag" and node.kind in ("influxDBOut", "default") and args:
                strings.append((args[0], "written as a tag"))
            elif node.kind == UDF:
                strings += [(arg, f"passed to @{node.name}.{link.name}") for arg in args]
            elif node.kind == "eval" and link.name in ("as", "tags", "keep"):
                strings += [(arg, f"output by eval .{link.name}") for arg in args]
        for arg, verb in strings:
            value = evaluate(arg, self.env)
            if value.kind in ("string", "reference") and value.value in keys:
                self.at(arg, "pii-key", f"personal-data key {value.value!r} is {verb}")

    def check_selector(self, node: PipelineNode, ctx: LintContext) -> None:
        upstream = node.parent
        while upstream is not None and upstream.kind in FIELD_PRESERVING:
            upstream = upstream.parent
        if upstream is None or upstream.kind != "query" or not upstream.args:
            return
        literal = upstream.args[0]
        if not isinstance(literal, StringLiteral):
            return
        try:
            query = parse_query(literal.value)
        except QueryError:
            return
        extra = sorted(
            {
                column.name
                for column in query.columns
                if not column.alias
                and column.cast != "tag"
                and column.name not in (ctx.value_field, "time")
            }
        )
        if query.wildcard_offset is not None:
            extra.insert(0, "*")
        if extra:
            self.at(
                node,
                "pii-selector",
                f"{node.name}() copies every tag and field of the raw point it selects, and the "
                f"query also selects {', '.join(extra)}: select only {ctx.value_field!r} and tags",
            )


def _fits(link: ChainLink, signature: Signature) -> bool:
    count = len(link.args or ())
    if count < len(signature.fixed) + signature.minimum:
        return False
    return signature.variadic is not None or count == len(signature.fixed)


def _is_pipeline(expression: Chain | Identifier) -> bool:
    """Whether a statement builds pipeline nodes (a chain, or a bare `batch`/`stream`)."""
    if isinstance(expression, Chain):
        return True
    return expression.name in SOURCE_CHILDREN


def _matches(value: Value, kind: str) -> bool:
    if value.kind == "unknown":
        return True
    if kind == NUMBER:
        return value.kind in ("int", "float")
    return value.kind == kind


def _is_empty_string(link: ChainLink, env: dict[str, Binding]) -> bool:
    if not link.args:
        return True
    value = evaluate(link.args[0], env)
    return value.kind == "string" and value.value == ""


def _position_in(literal: StringLiteral, offset: int) -> tuple[int, int]:
    """Line and column in the script of character `offset` of a string literal's value."""
    line, column = literal.line, literal.column + (3 if literal.triple else 1)
    for char in literal.value[:offset]:
        if char == "\n":
            line, column = line + 1, 1
        else:
            # A quote inside a single-quoted string was written as \' (two characters).
            column += 2 if char == "'" and not literal.triple else 1
    return line, column


def lint(
    source: str,
    ctx: LintContext | None = None,
    file: str = "<script>",
    *,
    personal_keys: frozenset[str] = frozenset(),
) -> list[LintProblem]:
    """Every problem in `source`, sorted by position; never raises.

    Without `ctx` only the rules that need no knowledge of the aggregation run (syntax, node
    and property names, task type, query shape, presence of .period/.every/.align, influxDBOut
    targets, percentile literals), and the personal-data rules against `personal_keys` when
    given; with it, also the window, selector and personal-data rules of its plan.
    """
    return _Linter(file, ctx, personal_keys).run(source)
