"""Parse TICKscript into `federation.tickscript.ast`, and print a tree back canonically.

The grammar is Kapacitor's (`tick/ast/parser.go`):

    program     = { statement } .
    statement   = "var" ident ( "=" expression | ident ) | "dbrp" ref "." ref | expression .
    expression  = ident-or-call chain | "lambda:" primary-expr | list | primary-expr .
    chain       = { ( "|" call | "." ( call | ident ) | "@" ( call | ident ) ) } .
    primary     = "(" primary-expr ")" | number | string | TRUE | FALSE | duration | regex
                | "*" | reference | ident [ "(" args ")" ] | ( "-" | "!" ) primary .

Binary operators are left-associative with Kapacitor's precedence (see `lexer.PRECEDENCE`).
Literal values are checked as Kapacitor checks them: a leading `0` makes an integer octal (so
`08` is an error), integers must fit in 64 bits, and regexes must compile.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from federation.core.durations import NS_PER_UNIT
from federation.errors import TickScriptError
from federation.tickscript.ast import (
    Binary,
    BoolLiteral,
    Chain,
    ChainLink,
    Comment,
    Dbrp,
    Declaration,
    DurationLiteral,
    Expression,
    ExpressionStatement,
    FunctionCall,
    Identifier,
    Lambda,
    ListLiteral,
    NumberLiteral,
    Program,
    Reference,
    RegexLiteral,
    Star,
    Statement,
    StringLiteral,
    TypeDeclaration,
    Unary,
)
from federation.tickscript.lexer import OPERATOR_TEXT, PRECEDENCE, Token, TokenType, tokenize

_INT64_MAX = 2**63 - 1
_CHAIN_OPERATORS = {TokenType.DOT: ".", TokenType.PIPE: "|", TokenType.AT: "@"}


class _Parser:
    def __init__(self, source: str, file: str) -> None:
        self.file = file
        self.tokens: list[Token] = []
        # The comment (merged `//` tokens) that directly precedes each kept token.
        self.comments: list[Comment | None] = []
        pending: list[Token] = []
        for token in tokenize(source, file):
            if token.type is TokenType.COMMENT:
                pending.append(token)
                continue
            self.tokens.append(token)
            self.comments.append(_comment(pending) if pending else None)
            pending = []
        self.index = 0

    # -- token access -------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.tokens[self.index]
        if token.type is not TokenType.EOF:
            self.index += 1
        return token

    def expect(self, kind: TokenType, what: str | None = None) -> Token:
        token = self.next()
        if token.type is not kind:
            raise self.unexpected(token, what or _describe_type(kind))
        return token

    def unexpected(self, token: Token, expected: str) -> TickScriptError:
        message = f"unexpected {_describe(token)}, expected {expected}"
        hint = self.hint(token)
        if hint:
            message += f" ({hint})"
        return TickScriptError(message, token.line, token.column, self.file)

    def hint(self, token: Token) -> str:
        """Explain the common literal traps when `token` directly follows a literal."""
        position = self.tokens.index(token)
        if position == 0:
            return ""
        before = self.tokens[position - 1]
        touching = before.offset + len(before.text) == token.offset
        if not touching:
            return ""
        if before.type is TokenType.NUMBER and token.type is TokenType.IDENT:
            if token.text[0] in "eE":
                return "TICKscript numbers have no exponent notation"
            if "." in before.text and token.text[0] in "uµsmhdw":
                return "durations are a whole number and one unit: write 90m, not 1.5h"
        if before.type is TokenType.DURATION and token.type is TokenType.DURATION:
            return "durations take one unit: write 90m or 1h + 30m, not 1h30m"
        return ""

    def error(self, message: str, token: Token) -> TickScriptError:
        return TickScriptError(message, token.line, token.column, self.file)

    # -- statements ---------------------------------------------------------------------

    def program(self) -> Program:
        statements: list[Statement] = []
        while self.peek().type is not TokenType.EOF:
            statements.append(self.statement())
        trailing = self.comments[self.index]
        return Program(tuple(statements), trailing)

    def statement(self) -> Statement:
        first = self.peek()
        comment = self.comments[self.index]
        if first.type is TokenType.VAR:
            self.next()
            name = self.expect(TokenType.IDENT, "a variable name")
            if self.peek().type is TokenType.ASSIGN:
                self.next()
                value = self.expression()
                return Declaration(name.text, value, comment, first.line, first.column)
            type_name = self.expect(TokenType.IDENT, "'=' or a type name")
            return TypeDeclaration(name.text, type_name.text, comment, first.line, first.column)
        if first.type is TokenType.DBRP:
            self.next()
            database = self.reference()
            self.expect(TokenType.DOT, "'.' between database and retention policy")
            policy = self.reference()
            return Dbrp(database.name, policy.name, comment, first.line, first.column)
        expression = self.expression()
        return ExpressionStatement(expression, comment, first.line, first.column)

    # -- expressions --------------------------------------------------------------------

    def expression(self) -> Expression:
        token = self.peek()
        if token.type is TokenType.IDENT:
            following = self.peek(1).type
            if following is TokenType.LPAREN:
                call = self.global_call()
                if self.peek().type in _CHAIN_OPERATORS:
                    return self.chain(call)
                return self.precedence(call, 0)
            if following in _CHAIN_OPERATORS:
                head = self.identifier()
                return self.chain(head)
            return self.primary_expression()
        if token.type is TokenType.LAMBDA:
            self.next()
            return Lambda(self.primary_expression(), token.line, token.column)
        if token.type is TokenType.LBRACKET:
            return self.list_literal()
        return self.primary_expression()

    def chain(self, head: Identifier | FunctionCall) -> Chain:
        links: list[ChainLink] = []
        while self.peek().type in _CHAIN_OPERATORS:
            comment = self.comments[self.index]
            operator = self.next()
            symbol = _CHAIN_OPERATORS[operator.type]
            name = self.expect(TokenType.IDENT, f"a method name after '{symbol}'")
            args: tuple[Expression, ...] | None = None
            if symbol == "|" or self.peek().type is TokenType.LPAREN:
                self.expect(TokenType.LPAREN, f"'(' after '|{name.text}'")
                args = self.arguments(self.expression)
            links.append(
                ChainLink(symbol, name.text, args, comment, operator.line, operator.column)
            )
        return Chain(head, tuple(links), head.line, head.column)

    def arguments(self, parse_one: Callable[[], Expression]) -> tuple[Expression, ...]:
        """Parse `a, b, ...)` after an opening parenthesis, consuming the `)`."""
        args: list[Expression] = []
        if self.peek().type is not TokenType.RPAREN:
            while True:
                args.append(parse_one())
                if self.peek().type is not TokenType.COMMA:
                    break
                self.next()
        self.expect(TokenType.RPAREN, "',' or ')'")
        return tuple(args)

    def function_call(self) -> FunctionCall:
        name = self.expect(TokenType.IDENT)
        self.expect(TokenType.LPAREN)
        args = self.arguments(self.lambda_argument)
        return FunctionCall(name.text, args, name.line, name.column)

    def global_call(self) -> FunctionCall:
        name = self.expect(TokenType.IDENT)
        self.expect(TokenType.LPAREN)
        args = self.arguments(self.expression)
        return FunctionCall(name.text, args, name.line, name.column)

    def lambda_argument(self) -> Expression:
        return self.precedence(self.primary(), 0)

    def list_literal(self) -> ListLiteral:
        opening = self.expect(TokenType.LBRACKET)
        items: list[Expression] = []
        while self.peek().type is not TokenType.RBRACKET:
            token = self.peek()
            if token.type is TokenType.IDENT:
                items.append(self.identifier())
            elif token.type is TokenType.STRING:
                items.append(self.string())
            elif token.type is TokenType.STAR:
                self.next()
                items.append(Star(token.line, token.column))
            else:
                raise self.unexpected(token, "a string, an identifier or '*' in a list")
            if self.peek().type is not TokenType.COMMA:
                break
            self.next()
        self.expect(TokenType.RBRACKET, "',' or ']'")
        return ListLiteral(tuple(items), opening.line, opening.column)

    def primary_expression(self) -> Expression:
        return self.precedence(self.primary(), 0)

    def precedence(self, left: Expression, minimum: int) -> Expression:
        # Operator-precedence climbing; every operator is left-associative.
        look = self.peek()
        while look.type in PRECEDENCE and PRECEDENCE[look.type] >= minimum:
            operator = self.next()
            right = self.primary()
            look = self.peek()
            while look.type in PRECEDENCE and PRECEDENCE[look.type] > PRECEDENCE[operator.type]:
                right = self.precedence(right, PRECEDENCE[look.type])
                look = self.peek()
            left = Binary(operator.type, left, right, operator.line, operator.column)
        return left

    def primary(self) -> Expression:
        token = self.peek()
        kind = token.type
        if kind is TokenType.LPAREN:
            self.next()
            inner = self.primary_expression()
            self.expect(TokenType.RPAREN, "')'")
            return inner
        if kind is TokenType.NUMBER:
            self.next()
            return self.number(token)
        if kind is TokenType.STRING:
            return self.string()
        if kind in (TokenType.TRUE, TokenType.FALSE):
            self.next()
            return BoolLiteral(kind is TokenType.TRUE, token.line, token.column)
        if kind is TokenType.DURATION:
            self.next()
            return self.duration(token)
        if kind is TokenType.REGEX:
            self.next()
            return self.regex(token)
        if kind is TokenType.STAR:
            self.next()
            return Star(token.line, token.column)
        if kind is TokenType.REFERENCE:
            return self.reference()
        if kind is TokenType.IDENT:
            if self.peek(1).type is TokenType.LPAREN:
                return self.function_call()
            return self.identifier()
        if kind in (TokenType.MINUS, TokenType.NOT):
            self.next()
            operand = self.primary()
            return Unary(kind, operand, token.line, token.column)
        raise self.unexpected(token, "a value, an identifier, '(', '-' or '!'")

    # -- literals -----------------------------------------------------------------------

    def identifier(self) -> Identifier:
        token = self.expect(TokenType.IDENT)
        return Identifier(token.text, token.line, token.column)

    def reference(self) -> Reference:
        token = self.expect(TokenType.REFERENCE, 'a double-quoted name like "mydb"')
        name = token.text[1:-1].replace('\\"', '"')
        return Reference(name, token.line, token.column)

    def string(self) -> StringLiteral:
        token = self.expect(TokenType.STRING)
        text = token.text
        if len(text) >= 6 and text.startswith("'''"):
            return StringLiteral(text[3:-3], True, token.line, token.column)
        return StringLiteral(text[1:-1].replace("\\'", "'"), False, token.line, token.column)

    def number(self, token: Token) -> NumberLiteral:
        text = token.text
        if not text.isascii():
            raise self.error(f"illegal number syntax: {text!r}", token)
        if "." in text:
            value = float(text)
            if value == float("inf"):
                raise self.error(f"number out of range: {text}", token)
            return NumberLiteral(value, True, False, token.line, token.column)
        octal = len(text) > 1 and text[0] == "0"
        try:
            integer = int(text, 8 if octal else 10)
        except ValueError:
            raise self.error(
                f"illegal number syntax: {text!r} (a leading 0 makes an integer octal)", token
            ) from None
        if integer > _INT64_MAX:
            raise self.error(f"number out of range: {text}", token)
        return NumberLiteral(integer, False, octal, token.line, token.column)

    def duration(self, token: Token) -> DurationLiteral:
        text = token.text
        digits = text.rstrip("uµsmhdw")
        unit = text[len(digits) :]
        if not digits.isascii() or not digits.isdigit():
            raise self.error(f"invalid duration {text!r}", token)
        ns = int(digits) * NS_PER_UNIT[unit]
        if ns > _INT64_MAX:
            raise self.error(f"duration out of range: {text}", token)
        return DurationLiteral(ns, text, token.line, token.column)

    def regex(self, token: Token) -> RegexLiteral:
        pattern = token.text[1:-1].replace("\\/", "/")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.error(f"invalid regex /{pattern}/: {exc}", token) from None
        return RegexLiteral(pattern, token.line, token.column)


def _comment(tokens: list[Token]) -> Comment:
    lines: list[str] = []
    for token in tokens:
        lines.extend(part.strip() for part in token.text.split("\n"))
    return Comment(tuple(line for line in lines if line), tokens[0].line, tokens[0].column)


def _describe_type(kind: TokenType) -> str:
    if kind in (TokenType.IDENT, TokenType.REFERENCE, TokenType.STRING, TokenType.NUMBER):
        return f"a {kind.value}"
    if kind is TokenType.EOF:
        return "the end of the script"
    return f"'{kind.value}'"


def _describe(token: Token) -> str:
    if token.type is TokenType.EOF:
        return "end of script"
    text = token.text if len(token.text) <= 30 else token.text[:27] + "..."
    return f"{token.type.value} {text!r}" if token.type.value != token.text else f"'{text}'"


def parse(source: str, file: str = "<script>") -> Program:
    """Parse a whole TICKscript into a `Program`.

    Raises `TickScriptError` naming `file` and the 1-based line:column of the first problem.
    """
    parser = _Parser(source, file)
    return parser.program()


# -- canonical printer --------------------------------------------------------------------

_INDENT = "    "


def format(program: Program) -> str:
    """Print `program` canonically; `parse(format(p)) == p` for every tree the parser makes.

    Chains put each `|`/`@` link on its own line, indented once, and each `.` property
    indented twice; statements are separated by a blank line. Raises ValueError for a tree
    no TICKscript can spell (a string ending in a backslash that also contains `'''`).
    """
    parts: list[str] = []
    for statement in program.statements:
        parts.append(_format_comment(statement.comment, "") + _format_statement(statement))
    if program.trailing_comment is not None:
        parts.append(_format_comment(program.trailing_comment, "").rstrip("\n"))
    return "\n\n".join(parts) + "\n"


def _format_comment(comment: Comment | None, indent: str) -> str:
    if comment is None:
        return ""
    return "".join(f"{indent}{line}\n" for line in comment.lines)


def _format_statement(statement: Statement) -> str:
    if isinstance(statement, Declaration):
        return f"var {statement.name} = {format_expression(statement.value)}"
    if isinstance(statement, TypeDeclaration):
        return f"var {statement.name} {statement.type_name}"
    if isinstance(statement, Dbrp):
        database = _format_reference(statement.database)
        policy = _format_reference(statement.retention_policy)
        return f"dbrp {database}.{policy}"
    return format_expression(statement.expression)


def format_expression(expression: Expression, indent: str = "") -> str:
    """Print one expression as TICKscript (chains span several lines, indented from `indent`)."""
    if isinstance(expression, NumberLiteral):
        return _format_number(expression)
    if isinstance(expression, DurationLiteral):
        return expression.literal or _format_duration(expression.ns)
    if isinstance(expression, StringLiteral):
        return format_string(expression.value, expression.triple)
    if isinstance(expression, BoolLiteral):
        return "TRUE" if expression.value else "FALSE"
    if isinstance(expression, RegexLiteral):
        return "/" + expression.pattern.replace("/", "\\/") + "/"
    if isinstance(expression, Star):
        return "*"
    if isinstance(expression, Reference):
        return _format_reference(expression.name)
    if isinstance(expression, Identifier):
        return expression.name
    if isinstance(expression, ListLiteral):
        return "[" + ", ".join(format_expression(item, indent) for item in expression.items) + "]"
    if isinstance(expression, Lambda):
        return "lambda: " + _after_keyword(format_expression(expression.body, indent))
    if isinstance(expression, Unary):
        operand = format_expression(expression.operand, indent)
        if isinstance(expression.operand, Binary):
            operand = f"({operand})"
        return OPERATOR_TEXT[expression.operator] + operand
    if isinstance(expression, Binary):
        return _format_binary(expression, indent)
    if isinstance(expression, FunctionCall):
        args = ", ".join(format_expression(arg, indent) for arg in expression.args)
        return f"{expression.name}({args})"
    return _format_chain(expression, indent)


def _format_binary(expression: Binary, indent: str) -> str:
    level = PRECEDENCE[expression.operator]
    left = format_expression(expression.left, indent)
    if isinstance(expression.left, Binary) and PRECEDENCE[expression.left.operator] < level:
        left = f"({left})"
    elif _ends_in_start_state(expression.left) and expression.operator not in (
        TokenType.AND,
        TokenType.OR,
    ):
        # After a regex or a star the lexer is at a token start, where an operator symbol
        # is not allowed; parentheses put it back after an operand.
        left = f"({left})"
    right = format_expression(expression.right, indent)
    if isinstance(expression.right, Binary) and PRECEDENCE[expression.right.operator] <= level:
        right = f"({right})"
    elif expression.operator in (TokenType.AND, TokenType.OR):
        right = _after_keyword(right)
    return f"{left} {OPERATOR_TEXT[expression.operator]} {right}"


def _after_keyword(text: str) -> str:
    # After a keyword (`lambda:`, `AND`, `OR`) the lexer looks for a binary operator, so a
    # leading `*` or `/` would read as multiply or divide; parentheses keep it a star or regex.
    return f"({text})" if text.startswith(("*", "/")) else text


def _ends_in_start_state(expression: Expression) -> bool:
    if isinstance(expression, RegexLiteral | Star | ListLiteral):
        return True
    if isinstance(expression, Unary):
        return _ends_in_start_state(expression.operand) and not isinstance(
            expression.operand, Binary
        )
    if isinstance(expression, Binary):
        return _ends_in_start_state(expression.right)
    return False


def _format_chain(chain: Chain, indent: str) -> str:
    text = format_expression(chain.head, indent)
    for link in chain.links:
        step = indent + _INDENT + (_INDENT if link.operator == "." else "")
        text += "\n" + _format_comment(link.comment, step) + step + link.operator + link.name
        if link.args is not None:
            inner = step + _INDENT
            text += "(" + ", ".join(format_expression(arg, inner) for arg in link.args) + ")"
    return text


def _format_number(number: NumberLiteral) -> str:
    if not number.is_float:
        return str(int(number.value))
    # Positional notation only: TICKscript has no exponent form.
    text = f"{Decimal(repr(float(number.value))):f}"
    return text if "." in text else text + ".0"


def _format_duration(ns: int) -> str:
    for unit in ("w", "d", "h", "m", "s", "ms", "u"):
        size = NS_PER_UNIT[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    raise ValueError(f"{ns}ns cannot be written as a TICKscript duration")


def format_string(value: str, triple: bool = False) -> str:
    """Quote `value` as a TICKscript string literal that parses back to exactly `value`."""
    triple_ok = "'''" not in value and not value.endswith("'")
    if triple and triple_ok:
        return f"'''{value}'''"
    if not value.endswith("\\"):
        return "'" + value.replace("'", "\\'") + "'"
    if triple_ok:
        return f"'''{value}'''"
    raise ValueError(f"no TICKscript string literal can hold {value!r}")


def _format_reference(name: str) -> str:
    if name.endswith("\\"):
        raise ValueError(f"no TICKscript reference can hold {name!r}")
    return '"' + name.replace('"', '\\"') + '"'
