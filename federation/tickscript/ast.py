"""The TICKscript syntax tree.

Nodes are frozen dataclasses. Every node carries the 1-based `line` and `column` where it
starts; positions (and how a literal was spelled: octal digits, triple quotes, duration units)
are excluded from equality, so two trees compare equal when they mean the same script.

Comments are kept where they document something: before a statement and before a chain link
(`|`, `.`, `@`). Comments anywhere else are dropped by the parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from federation.tickscript.lexer import TokenType


def _pos() -> int:
    return field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Comment:
    """Consecutive `//` lines, each as written (stripped of surrounding whitespace)."""

    lines: tuple[str, ...]
    line: int = _pos()
    column: int = _pos()

    @property
    def text(self) -> str:
        """The comment's text without the `//` markers, one line per source line."""
        return "\n".join(_strip_marker(line) for line in self.lines)


def _strip_marker(line: str) -> str:
    text = line.lstrip("/")
    return text[1:] if text.startswith(" ") else text


@dataclass(frozen=True)
class NumberLiteral:
    """An integer or float literal (never negative: `-1` is a `Unary`)."""

    value: int | float
    is_float: bool
    octal: bool = field(default=False, compare=False)
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class DurationLiteral:
    """A duration such as `90m`; `ns` is its length, `literal` how it was written."""

    ns: int
    literal: str = field(default="", compare=False)
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class StringLiteral:
    """A single- or triple-quoted string, unescaped."""

    value: str
    triple: bool = field(default=False, compare=False)
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class BoolLiteral:
    """`TRUE` or `FALSE`."""

    value: bool
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class RegexLiteral:
    """A `/.../` literal; `pattern` has `\\/` already turned into `/`."""

    pattern: str
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Star:
    """The `*` literal (all tags, all fields)."""

    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Reference:
    """A double-quoted field or tag name, as used inside lambdas."""

    name: str
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Identifier:
    """A bare name: a variable, or the source `batch`/`stream`."""

    name: str
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class ListLiteral:
    """`[ ... ]` of strings, identifiers and stars."""

    items: tuple[Expression, ...]
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Lambda:
    """`lambda: <expression>`."""

    body: Expression
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Unary:
    """`-x` or `!x`."""

    operator: TokenType
    operand: Expression
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Binary:
    """A binary operation; `line`/`column` are the operator's."""

    operator: TokenType
    left: Expression
    right: Expression
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class FunctionCall:
    """A global function call (`time(1h)`, or a lambda function like `floor(x)`)."""

    name: str
    args: tuple[Expression, ...]
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class ChainLink:
    """One step of a chain: `|name(args)`, `.name(args)` or `@name(args)`.

    `args` is None when the method was written without parentheses (`.align`), which the
    grammar allows for `.` and `@`. `line`/`column` are those of the operator.
    """

    operator: str
    name: str
    args: tuple[Expression, ...] | None
    comment: Comment | None = None
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Chain:
    """`head` followed by one or more links, left to right."""

    head: Identifier | FunctionCall
    links: tuple[ChainLink, ...]
    line: int = _pos()
    column: int = _pos()


Expression = (
    NumberLiteral
    | DurationLiteral
    | StringLiteral
    | BoolLiteral
    | RegexLiteral
    | Star
    | Reference
    | Identifier
    | ListLiteral
    | Lambda
    | Unary
    | Binary
    | FunctionCall
    | Chain
)


@dataclass(frozen=True)
class Declaration:
    """`var name = value`."""

    name: str
    value: Expression
    comment: Comment | None = None
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class TypeDeclaration:
    """`var name type`: the value must come from the task's vars."""

    name: str
    type_name: str
    comment: Comment | None = None
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class Dbrp:
    """`dbrp "database"."retention_policy"`."""

    database: str
    retention_policy: str
    comment: Comment | None = None
    line: int = _pos()
    column: int = _pos()


@dataclass(frozen=True)
class ExpressionStatement:
    """A statement that is an expression, usually a pipeline chain."""

    expression: Expression
    comment: Comment | None = None
    line: int = _pos()
    column: int = _pos()


Statement = Declaration | TypeDeclaration | Dbrp | ExpressionStatement


@dataclass(frozen=True)
class Program:
    """A whole script: its statements and any comment after the last one."""

    statements: tuple[Statement, ...]
    trailing_comment: Comment | None = None

    @property
    def leading_comment(self) -> Comment | None:
        """The comment before the first statement (where a rendered plan writes its version)."""
        if self.statements:
            return self.statements[0].comment
        return self.trailing_comment
