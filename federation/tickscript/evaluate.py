"""Constant evaluation of a TICKscript: what each argument and `var` binding evaluates to,
and the pipeline nodes the linter rebuilds from the chains."""

from __future__ import annotations

from dataclasses import dataclass, field

from federation.tickscript.ast import (
    Binary,
    BoolLiteral,
    ChainLink,
    DurationLiteral,
    Expression,
    Identifier,
    Lambda,
    ListLiteral,
    NumberLiteral,
    Reference,
    RegexLiteral,
    Star,
    StringLiteral,
    Unary,
)
from federation.tickscript.lexer import TokenType


@dataclass(frozen=True)
class Value:
    """What an argument evaluates to when the script is evaluated (`unknown` if not constant)."""

    kind: str
    value: object = None


UNKNOWN = Value("unknown")


@dataclass(eq=False)
class PipelineNode:
    kind: str
    name: str
    line: int
    column: int
    args: tuple[Expression, ...] = ()
    parent: PipelineNode | None = None
    known: bool = True
    children: list[PipelineNode] = field(default_factory=list)
    properties: list[ChainLink] = field(default_factory=list)

    def last(self, name: str) -> ChainLink | None:
        found = [link for link in self.properties if link.name == name]
        return found[-1] if found else None

    def all(self, name: str) -> list[ChainLink]:
        return [link for link in self.properties if link.name == name]


Binding = Value | PipelineNode


def evaluate(expression: Expression, env: dict[str, Binding]) -> Value:
    if isinstance(expression, NumberLiteral):
        return Value("float" if expression.is_float else "int", expression.value)
    if isinstance(expression, DurationLiteral):
        return Value("duration", expression.ns)
    if isinstance(expression, StringLiteral):
        return Value("string", expression.value)
    if isinstance(expression, BoolLiteral):
        return Value("bool", expression.value)
    if isinstance(expression, RegexLiteral):
        return Value("regex", expression.pattern)
    if isinstance(expression, Star):
        return Value("star")
    if isinstance(expression, Reference):
        return Value("reference", expression.name)
    if isinstance(expression, Lambda):
        return Value("lambda")
    if isinstance(expression, ListLiteral):
        return Value("list")
    if isinstance(expression, Identifier):
        bound = env.get(expression.name)
        if isinstance(bound, Value):
            return bound
        return Value("node") if bound is not None else UNKNOWN
    if isinstance(expression, Unary):
        operand = evaluate(expression.operand, env)
        negatable = operand.kind in ("int", "float", "duration")
        if expression.operator is TokenType.MINUS and negatable:
            assert isinstance(operand.value, int | float)
            return Value(operand.kind, -operand.value)
        return UNKNOWN
    if isinstance(expression, Binary):
        return _evaluate_binary(expression, env)
    return UNKNOWN


def _evaluate_binary(expression: Binary, env: dict[str, Binding]) -> Value:
    left, right = evaluate(expression.left, env), evaluate(expression.right, env)
    a, b, op = left.value, right.value, expression.operator
    if left.kind == right.kind == "string" and op is TokenType.PLUS:
        return Value("string", f"{a}{b}")
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return UNKNOWN
    kinds = (left.kind, right.kind)
    if kinds == ("duration", "duration") and op in (TokenType.PLUS, TokenType.MINUS):
        return Value("duration", a + b if op is TokenType.PLUS else a - b)
    if left.kind == "duration" and right.kind in ("int", "float"):
        if op is TokenType.MULT:
            return Value("duration", int(a * b))
        if op is TokenType.DIV and b != 0:
            return Value("duration", int(a / b))
    if kinds in (("int", "int"), ("float", "float")):
        if op is TokenType.PLUS:
            return Value(left.kind, a + b)
        if op is TokenType.MINUS:
            return Value(left.kind, a - b)
        if op is TokenType.MULT:
            return Value(left.kind, a * b)
    return UNKNOWN
