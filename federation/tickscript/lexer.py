"""TICKscript tokens, with the same rules as Kapacitor's lexer (`tick/ast/lex.go`).

The lexer has two states, and which one it is in decides what a character means:

* at a token start, `-` and `!` are unary operators, `*` is the star literal, `/` starts a regex
  (or a `//` comment), and `=`, `<`, `>`, `+`, `%` are errors;
* right after an operand (identifier, keyword, number, duration, string, reference or `)`),
  the lexer first looks for a binary operator: `+ - * / % < <= > >= = == =~ != !~ !`.

So `a * b` multiplies while `groupBy(*)` passes a star, `x / 2` divides while `(/re/)` is a regex,
and a binary operator written right after a regex, `*` or `]` is an error, exactly as in
Kapacitor. Newlines are plain whitespace. Columns are 1-based and count characters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from federation.errors import TickScriptError

DURATION_UNITS = "uµsmhdw"


class TokenType(enum.Enum):
    """The kinds of token Kapacitor's lexer produces."""

    EOF = "end of script"
    VAR = "var"
    DBRP = "dbrp"
    ASSIGN = "="
    DOT = "."
    PIPE = "|"
    AT = "@"
    IDENT = "identifier"
    REFERENCE = "reference"
    LAMBDA = "lambda:"
    NUMBER = "number"
    STRING = "string"
    DURATION = "duration"
    LPAREN = "("
    RPAREN = ")"
    LBRACKET = "["
    RBRACKET = "]"
    COMMA = ","
    NOT = "!"
    TRUE = "TRUE"
    FALSE = "FALSE"
    REGEX = "regex"
    COMMENT = "comment"
    STAR = "*"
    PLUS = "+"
    MINUS = "-"
    MULT = "multiplication"
    DIV = "/"
    MOD = "%"
    AND = "AND"
    OR = "OR"
    EQUAL = "=="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"
    LESS_EQUAL = "<="
    GREATER_EQUAL = ">="
    REGEX_EQUAL = "=~"
    REGEX_NOT_EQUAL = "!~"


KEYWORDS: dict[str, TokenType] = {
    "var": TokenType.VAR,
    "dbrp": TokenType.DBRP,
    "TRUE": TokenType.TRUE,
    "FALSE": TokenType.FALSE,
    "AND": TokenType.AND,
    "OR": TokenType.OR,
}

# Binary operators and their precedence (low binds loosest), as in Kapacitor's parser.
PRECEDENCE: dict[TokenType, int] = {
    TokenType.OR: 0,
    TokenType.AND: 1,
    TokenType.EQUAL: 2,
    TokenType.NOT_EQUAL: 2,
    TokenType.REGEX_EQUAL: 2,
    TokenType.REGEX_NOT_EQUAL: 2,
    TokenType.LESS: 3,
    TokenType.LESS_EQUAL: 3,
    TokenType.GREATER: 3,
    TokenType.GREATER_EQUAL: 3,
    TokenType.PLUS: 4,
    TokenType.MINUS: 4,
    TokenType.MULT: 5,
    TokenType.DIV: 5,
    TokenType.MOD: 5,
}

OPERATOR_TEXT: dict[TokenType, str] = {
    TokenType.OR: "OR",
    TokenType.AND: "AND",
    TokenType.EQUAL: "==",
    TokenType.NOT_EQUAL: "!=",
    TokenType.REGEX_EQUAL: "=~",
    TokenType.REGEX_NOT_EQUAL: "!~",
    TokenType.LESS: "<",
    TokenType.LESS_EQUAL: "<=",
    TokenType.GREATER: ">",
    TokenType.GREATER_EQUAL: ">=",
    TokenType.PLUS: "+",
    TokenType.MINUS: "-",
    TokenType.MULT: "*",
    TokenType.DIV: "/",
    TokenType.MOD: "%",
    TokenType.NOT: "!",
}


@dataclass(frozen=True)
class Token:
    """One token: its type, its exact source text, and where it starts (1-based)."""

    type: TokenType
    text: str
    offset: int
    line: int
    column: int


def _is_letter(char: str) -> bool:
    return char.isalpha()


def _is_digit(char: str) -> bool:
    return char.isdecimal()


def _is_ident_char(char: str) -> bool:
    return char.isalpha() or char.isdecimal() or char == "_"


class _Lexer:
    def __init__(self, source: str, file: str) -> None:
        self.source = source
        self.file = file
        self.pos = 0
        self.tokens: list[Token] = []
        # Offsets where lines start, to turn an offset into line:column.
        self.line_starts = [0]
        for index, char in enumerate(source):
            if char == "\n":
                self.line_starts.append(index + 1)

    def where(self, offset: int) -> tuple[int, int]:
        low, high = 0, len(self.line_starts) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self.line_starts[middle] <= offset:
                low = middle
            else:
                high = middle - 1
        return low + 1, offset - self.line_starts[low] + 1

    def error(self, message: str, offset: int) -> TickScriptError:
        line, column = self.where(offset)
        return TickScriptError(message, line, column, self.file)

    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.source[index] if index < len(self.source) else ""

    def emit(self, kind: TokenType, start: int) -> None:
        line, column = self.where(start)
        self.tokens.append(Token(kind, self.source[start : self.pos], start, line, column))

    def run(self) -> list[Token]:
        after_operand = False
        while True:
            if after_operand and self.binary_operator():
                after_operand = False
                continue
            after_operand = self.token_start()
            if self.tokens and self.tokens[-1].type is TokenType.EOF:
                return self.tokens

    def binary_operator(self) -> bool:
        """Lex a binary operator if one follows an operand; False leaves the input untouched."""
        while self.peek() and self.peek().isspace():
            self.pos += 1
        start = self.pos
        char, following = self.peek(), self.peek(1)
        if not char:
            return False
        kind: TokenType | None = None
        width = 1
        if char in "+-*%":
            kind = {
                "+": TokenType.PLUS,
                "-": TokenType.MINUS,
                "*": TokenType.MULT,
                "%": TokenType.MOD,
            }[char]
        elif char == "/":
            if following == "/":
                return False
            kind = TokenType.DIV
        elif char == "!":
            if following == "=":
                kind, width = TokenType.NOT_EQUAL, 2
            elif following == "~":
                kind, width = TokenType.REGEX_NOT_EQUAL, 2
            else:
                kind = TokenType.NOT
        elif char in "<>":
            if following == "=":
                kind = TokenType.LESS_EQUAL if char == "<" else TokenType.GREATER_EQUAL
                width = 2
            else:
                kind = TokenType.LESS if char == "<" else TokenType.GREATER
        elif char == "=":
            if following == "~":
                kind, width = TokenType.REGEX_EQUAL, 2
            elif following == "=":
                kind, width = TokenType.EQUAL, 2
            else:
                kind = TokenType.ASSIGN
        if kind is None:
            return False
        self.pos += width
        self.emit(kind, start)
        return True

    def token_start(self) -> bool:
        """Lex one token at a token start; return whether it was an operand."""
        while True:
            char = self.peek()
            start = self.pos
            if char == "":
                self.emit(TokenType.EOF, start)
                return False
            if char.isspace():
                self.pos += 1
                continue
            if char in "-!":
                self.pos += 1
                self.emit(TokenType.MINUS if char == "-" else TokenType.NOT, start)
                return False
            if _is_digit(char) or char == ".":
                return self.number_duration_or_dot()
            if _is_letter(char):
                return self.identifier_or_keyword()
            if char == '"':
                self.reference()
                return True
            if char == "'":
                self.string()
                return True
            simple = {
                "(": TokenType.LPAREN,
                ")": TokenType.RPAREN,
                "[": TokenType.LBRACKET,
                "]": TokenType.RBRACKET,
                "|": TokenType.PIPE,
                "@": TokenType.AT,
                ",": TokenType.COMMA,
                "*": TokenType.STAR,
            }
            if char in simple:
                self.pos += 1
                self.emit(simple[char], start)
                return char == ")"
            if char == "/":
                if self.peek(1) == "/":
                    self.comment()
                    continue
                self.regex()
                return False
            if char == "_":
                raise self.error("identifiers must start with a letter, not '_'", start)
            raise self.error(f"unexpected character {char!r}", start)

    def number_duration_or_dot(self) -> bool:
        start = self.pos
        if self.peek() == "." and not _is_digit(self.peek(1)):
            self.pos += 1
            self.emit(TokenType.DOT, start)
            return False
        seen_decimal = False
        while True:
            char = self.peek()
            if char == ".":
                if seen_decimal:
                    raise self.error("multiple decimals in number", start)
                seen_decimal = True
                self.pos += 1
            elif char != "" and _is_digit(char):
                self.pos += 1
            elif not seen_decimal and char != "" and char in DURATION_UNITS:
                self.pos += 1
                if char == "m" and self.peek() == "s":
                    self.pos += 1
                self.emit(TokenType.DURATION, start)
                return True
            else:
                self.emit(TokenType.NUMBER, start)
                return True

    def identifier_or_keyword(self) -> bool:
        start = self.pos
        while self.peek() and _is_ident_char(self.peek()):
            self.pos += 1
        word = self.source[start : self.pos]
        if word == "lambda" and self.peek() == ":":
            self.pos += 1
            self.emit(TokenType.LAMBDA, start)
        else:
            self.emit(KEYWORDS.get(word, TokenType.IDENT), start)
        return True

    def reference(self) -> None:
        start = self.pos
        self.pos += 1
        while True:
            char = self.peek()
            if char == "":
                raise self.error("unterminated field reference", start)
            self.pos += 1
            if char == "\\" and self.peek() == '"':
                self.pos += 1
            elif char == '"':
                self.emit(TokenType.REFERENCE, start)
                return

    def string(self) -> None:
        start = self.pos
        if self.source.startswith("'''", start):
            end = self.source.find("'''", start + 3)
            if end == -1:
                raise self.error("unterminated string", start)
            self.pos = end + 3
            self.emit(TokenType.STRING, start)
            return
        if self.source.startswith("''", start):
            self.pos += 2
            self.emit(TokenType.STRING, start)
            return
        self.pos += 1
        while True:
            char = self.peek()
            if char == "":
                raise self.error("unterminated string", start)
            self.pos += 1
            if char == "\\" and self.peek() == "'":
                self.pos += 1
            elif char == "'":
                self.emit(TokenType.STRING, start)
                return

    def regex(self) -> None:
        start = self.pos
        self.pos += 1
        while True:
            char = self.peek()
            if char == "":
                raise self.error("unterminated regex", start)
            self.pos += 1
            if char == "\\" and self.peek() == "/":
                self.pos += 1
            elif char == "/":
                self.emit(TokenType.REGEX, start)
                return

    def comment(self) -> None:
        # A comment runs to the end of its line; when the next line (after spaces) starts
        # with '/', Kapacitor continues the same comment there, so consecutive lines merge.
        start = self.pos
        while True:
            newline = self.source.find("\n", self.pos)
            if newline == -1:
                self.pos = len(self.source)
                break
            scan = newline + 1
            while scan < len(self.source) and self.source[scan] in " \t\r\v\f":
                scan += 1
            if scan < len(self.source) and self.source[scan] == "/":
                self.pos = scan
                continue
            self.pos = newline
            break
        self.emit(TokenType.COMMENT, start)


def tokenize(source: str, file: str = "<script>") -> list[Token]:
    """Split `source` into tokens, comments included, ending with one EOF token.

    Raises `TickScriptError` at the 1-based line:column where Kapacitor's lexer would stop.
    """
    return _Lexer(source, file).run()
